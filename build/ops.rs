//! burn-onnx codegen overrides: segtune's own BatchNorm (momentum converted, freezable) and
//! linear Resize as two matrix products (differentiable on every backend).

use burn_onnx::ext::proc_macro2::{Ident, Span, TokenStream};
use burn_onnx::ext::quote::quote;
use burn_onnx::ext::{Argument, CodegenContext, Field, Node, NodeType, OpOverride, ProcessError, arg_to_ident};

/// BatchNorm codegen: segtune's own `crate::model::BatchNorm` in place of burn's, with the
/// momentum convention converted.
///
/// ONNX's `momentum` weights the old running statistic
/// (`running = running * momentum + batch * (1 - momentum)`), burn's weights the new batch
/// (`running = running * (1 - momentum) + batch * momentum`). burn-onnx copies the number
/// unchanged, which makes the running statistics chase every batch; here the layer gets `1 - m`.
/// The module itself updates the running variance with the unbiased batch variance, as PyTorch
/// (where these checkpoints come from) does, and can be frozen per layer (see `model::BatchNorm`).
pub struct BatchNormMomentum;

impl BatchNormMomentum {
    fn node(node: &Node) -> Result<&onnx_ir::node::batch_norm::BatchNormalizationNode, ProcessError> {
        match node {
            Node::BatchNormalization(bn) => Ok(bn),
            _ => Err(ProcessError::Custom("expected a BatchNormalization node".into())),
        }
    }
}

impl OpOverride for BatchNormMomentum {
    fn target(&self) -> NodeType {
        NodeType::BatchNormalization
    }

    fn forward(&self, node: &Node, ctx: &mut CodegenContext<'_, '_>) -> Result<TokenStream, ProcessError> {
        use onnx_ir::node::batch_norm::BatchNormConfig;
        let bn = Self::node(node)?;
        let output = arg_to_ident(&bn.outputs[0]);
        let input = ctx.arg(&bn.inputs[0]);
        Ok(match &bn.config {
            BatchNormConfig::Static(_) => {
                let field = Ident::new(&bn.name, Span::call_site());
                quote! { let #output = self.#field.forward(#input); }
            }
            BatchNormConfig::Runtime(config) => {
                let scale = ctx.arg(&bn.inputs[1]);
                let bias = ctx.arg(&bn.inputs[2]);
                let mean = ctx.arg(&bn.inputs[3]);
                let var = ctx.arg(&bn.inputs[4]);
                let epsilon = config.epsilon;
                quote! {
                    let #output = burn::tensor::module::batch_norm(#input, #scale, #bias, #mean, #var, #epsilon);
                }
            }
        })
    }

    fn field(&self, node: &Node) -> Result<Option<Field>, ProcessError> {
        use onnx_ir::node::batch_norm::BatchNormConfig;
        let bn = Self::node(node)?;
        let BatchNormConfig::Static(config) = &bn.config else { return Ok(None) };
        let name = Ident::new(&bn.name, Span::call_site());
        let features = static_dim0(&bn.inputs[1])?;
        let epsilon = config.epsilon;
        let momentum = 1.0 - config.momentum;
        Ok(Some(Field::new(
            bn.name.clone(),
            quote! { crate::model::BatchNorm },
            quote! {
                let #name = crate::model::BatchNorm::new(#features, #epsilon, #momentum, device);
            },
        )))
    }

    fn collect_tensors(&self, node: &Node, field_name: &str) -> Result<Vec<burn_onnx::ext::PackTensor>, ProcessError> {
        use onnx_ir::node::batch_norm::BatchNormConfig;
        let bn = Self::node(node)?;
        if !matches!(bn.config, BatchNormConfig::Static(_)) {
            return Ok(vec![]);
        }
        let slots = ["gamma", "beta", "running_mean", "running_var"];
        Ok(slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| {
                let arg = bn.inputs.get(i + 1)?;
                burn_onnx::ext::create_deferred_tensor(arg, &format!("{field_name}.{slot}"))
            })
            .collect())
    }
}

fn static_dim0(arg: &Argument) -> Result<usize, ProcessError> {
    arg.ty
        .static_shape_known()
        .and_then(|s| s.first().copied())
        .ok_or_else(|| ProcessError::Custom("BatchNorm scale shape must be static".into()))
}

/// Linear `Resize` as two matrix products (`crate::model::resize_linear`), in place of burn's
/// `interpolate`: burn's GPU backends (cubecl) have no bilinear interpolate *backward*, so a model
/// with a bilinear Resize could not train on `wgpu`/`cuda`. A matrix product differentiates on
/// every backend, and each ONNX coordinate transform (half_pixel, pytorch_half_pixel,
/// align_corners, asymmetric) is reproduced exactly. Other modes (nearest, cubic) keep burn's op.
pub struct LinearResize;

impl OpOverride for LinearResize {
    fn target(&self) -> NodeType {
        NodeType::Resize
    }

    fn forward(&self, node: &Node, ctx: &mut CodegenContext<'_, '_>) -> Result<TokenStream, ProcessError> {
        use burn_onnx::ext::ArgType;
        use onnx_ir::node::resize::{CoordinateTransformMode as M, ResizeMode};
        let Node::Resize(r) = node else {
            return Err(ProcessError::Custom("expected a Resize node".into()));
        };
        let input_arg = &r.inputs[0];
        if !matches!(&input_arg.ty, ArgType::Tensor(t) if t.rank == 4) {
            return Err(ProcessError::Custom(format!("Resize {}: segtune supports 4-D inputs only", r.name)));
        }
        let output = arg_to_ident(&r.outputs[0]);
        let input = ctx.arg(input_arg);
        let size = target_size(r, ctx)?;
        let transform = match r.config.coordinate_transformation_mode {
            M::HalfPixel => Some(quote! { crate::model::ResizeCoordinates::HalfPixel }),
            M::PytorchHalfPixel => Some(quote! { crate::model::ResizeCoordinates::PytorchHalfPixel }),
            M::AlignCorners => Some(quote! { crate::model::ResizeCoordinates::AlignCorners }),
            M::Asymmetric => Some(quote! { crate::model::ResizeCoordinates::Asymmetric }),
            _ => None,
        };
        let resized = match (&r.config.mode, transform) {
            (ResizeMode::Linear, Some(transform)) => quote! { crate::model::resize_linear(x, #size, #transform) },
            (mode, _) => burn_interpolate(mode, r.config.coordinate_transformation_mode == M::AlignCorners, size),
        };
        Ok(quote! {
            let #output = {
                let x = #input;
                #[allow(unused_variables)]
                let dims = x.dims();
                #resized
            };
        })
    }
}

/// The Resize's target `[height, width]`, computed in the generated code from `dims` (the
/// input's): static or runtime sizes, or static or runtime scales.
fn target_size(
    r: &onnx_ir::node::resize::ResizeNode,
    ctx: &mut CodegenContext<'_, '_>,
) -> Result<TokenStream, ProcessError> {
    use burn_onnx::ext::ArgType;
    use onnx_ir::node::resize::{ResizeScales, ResizeSizes};
    Ok(match (&r.config.sizes, &r.config.scales) {
        (Some(ResizeSizes::Static(s)), _) if s.len() >= 2 => {
            let (h, w) = (s[s.len() - 2], s[s.len() - 1]);
            quote! { [#h, #w] }
        }
        (Some(ResizeSizes::Runtime(re)), _) => match &r.inputs[re.input_index].ty {
            ArgType::Shape(_) => {
                let sizes = arg_to_ident(&r.inputs[re.input_index]);
                quote! { [#sizes[2] as usize, #sizes[3] as usize] }
            }
            _ => {
                let sizes = ctx.arg(&r.inputs[re.input_index]);
                quote! {{
                    let v = #sizes.to_data().convert::<i64>();
                    let v = v.as_slice::<i64>().expect("i64 after convert");
                    [v[2] as usize, v[3] as usize]
                }}
            }
        },
        (_, Some(ResizeScales::Static(s))) if s.len() >= 2 => {
            let (sh, sw) = (s[s.len() - 2] as f64, s[s.len() - 1] as f64);
            quote! { [(dims[2] as f64 * #sh) as usize, (dims[3] as f64 * #sw) as usize] }
        }
        (_, Some(ResizeScales::Runtime(re))) => match &r.inputs[re.input_index].ty {
            ArgType::Shape(_) => {
                let scales = arg_to_ident(&r.inputs[re.input_index]);
                quote! { [(dims[2] as f64 * #scales[2] as f64) as usize, (dims[3] as f64 * #scales[3] as f64) as usize] }
            }
            _ => {
                let scales = ctx.arg(&r.inputs[re.input_index]);
                quote! {{
                    let v = #scales.to_data().convert::<f32>();
                    let v = v.as_slice::<f32>().expect("f32 after convert");
                    [(dims[2] as f64 * v[2] as f64) as usize, (dims[3] as f64 * v[3] as f64) as usize]
                }}
            }
        },
        _ => return Err(ProcessError::Custom(format!("Resize {}: neither sizes nor scales", r.name))),
    })
}

/// What burn-onnx generates for the modes segtune leaves to burn (nearest, cubic, and linear
/// with another coordinate transform).
fn burn_interpolate(mode: &onnx_ir::node::resize::ResizeMode, align_corners: bool, size: TokenStream) -> TokenStream {
    use onnx_ir::node::resize::ResizeMode;
    let mode = match mode {
        ResizeMode::Nearest => quote! { burn::tensor::ops::InterpolateMode::Nearest },
        ResizeMode::Linear => quote! { burn::tensor::ops::InterpolateMode::Bilinear },
        ResizeMode::Cubic => quote! { burn::tensor::ops::InterpolateMode::Bicubic },
    };
    quote! {
        burn::tensor::module::interpolate(
            x,
            burn::tensor::ops::InterpolateOptions::new(#mode)
                .with_output_size(#size)
                .with_align_corners(#align_corners),
        )
    }
}
