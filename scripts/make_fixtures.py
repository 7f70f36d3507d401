#!/usr/bin/env python3
"""Make the PyTorch fixtures under tests/fixtures/ (committed; torch is never needed to test).

bn_step.*: one train-mode step of the reference model on a fixed batch. PyTorch updates every
BatchNorm's running statistics during the forward pass, with momentum 0.1 in PyTorch's
convention (ONNX momentum 0.9) and the UNBIASED batch variance for running_var. The fixture holds
the statistics after that step, which segtune's burn model must reproduce to 1e-5.

  bn_step_input.bin   float32 little-endian, shape [2, 3, 64, 64], the batch
  bn_step.bin         float32 little-endian, per BN node in ONNX graph order: running_mean then
                      running_var after the step
  bn_step.json        index: for each BN node its ONNX node index, the value names its inputs
                      read (torch parameter names), channel count and offset into bn_step.bin
  conv_grads.bin      float32 little-endian: the same step's loss (cross-entropy, mean over the
                      pixels) gradient of every Conv weight, in ONNX graph order: whole for
                      grouped (depthwise) convolutions, else its first 2048 values; then every
                      BatchNormalization's scale and bias gradient, whole
  conv_grads.json     index: for each Conv node (then each BN scale/bias, with its "slot") its
                      ONNX node index, weight name, shape, groups,
                      the gradient's L2 norm, how many values are stored and their offset into
                      conv_grads.bin; the loss; the targets' shape (the targets are
                      conv_grads_target.bin, int64 little-endian)

losses.json: fixed logits [2, 5, 8, 8] and targets with 255 ("ignore") pixels, and the values of
  F.cross_entropy(ignore_index=255) (plain and with class weights), smp DiceLoss and FocalLoss in
  multiclass mode with ignore_index=255, and ce + 0.5 * dice.

Versions: as in scripts/export_reference.py. Usage: python scripts/make_fixtures.py
"""
import json

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from export_reference import build

ONNX_PATH = "models/deeplabv3plus_mobilenetv2.onnx"
OUT = "tests/fixtures/"


def losses():
    from segmentation_models_pytorch.losses import DiceLoss, FocalLoss

    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 5, 8, 8, generator=g) * 3
    target = torch.randint(0, 5, (2, 8, 8), generator=g)
    target[target == 4] = 3  # class 4 absent from the target
    target[0, :3, :] = 255  # an ignored band
    target[1, :, 5:] = 255
    weights = torch.tensor([0.5, 1.0, 2.0, 1.5, 1.0])
    ce = F.cross_entropy(logits, target, ignore_index=255)
    out = {
        "logits_shape": list(logits.shape),
        "logits": logits.flatten().tolist(),
        "target": target.flatten().tolist(),
        "class_weights": weights.tolist(),
        "ce": ce.item(),
        "ce_weighted": F.cross_entropy(logits, target, weight=weights, ignore_index=255).item(),
        "dice": DiceLoss(mode="multiclass", ignore_index=255)(logits, target).item(),
        "focal": FocalLoss(mode="multiclass", ignore_index=255)(logits, target).item(),
    }
    out["ce+0.5*dice"] = out["ce"] + 0.5 * out["dice"]
    json.dump(out, open(OUT + "losses.json", "w"))
    print({k: v for k, v in out.items() if isinstance(v, float)})


def torch_name(onnx_name):
    """The torch parameter an ONNX value name stands for (`segtune export` names a formerly
    shared value's own initializer NAME.segtune)."""
    return onnx_name.removesuffix(".segtune")


def load_onnx_weights(model, onnx_model):
    """Loads the ONNX file's weights into the torch model. Node inputs carry torch's parameter
    names; a name that is no initializer is an Identity output (torch shares equal tensors, and
    `segtune export` gives each alias its own initializer), followed back to one."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in onnx_model.graph.initializer}
    alias = {n.output[0]: n.input[0] for n in onnx_model.graph.node if n.op_type == "Identity"}

    def value(name):
        # `segtune export` gives a formerly shared value its own initializer, NAME.segtune (the
        # Identity node and the tensor it copied stay in the graph, unused).
        if name + ".segtune" in inits:
            return inits[name + ".segtune"]
        while name not in inits and name in alias:
            name = alias[name]
        return inits.get(name)

    state = model.state_dict()
    loaded = 0
    for name, tensor in state.items():
        arr = value(name)
        if arr is None:
            continue
        assert tuple(arr.shape) == tuple(tensor.shape), (name, arr.shape, tensor.shape)
        state[name] = torch.from_numpy(arr.copy())
        loaded += 1
    model.load_state_dict(state)
    missing = [k for k in state if value(k) is None and not k.endswith("num_batches_tracked")]
    assert not missing, f"not in {ONNX_PATH}: {missing[:5]}"
    print(f"loaded {loaded} tensors from {ONNX_PATH}")


def check_against_onnxruntime(model):
    """The loaded torch model computes what onnxruntime computes from the file (eval mode)."""
    import onnxruntime

    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    want = onnxruntime.InferenceSession(ONNX_PATH).run(None, {"input": x})[0]
    model.eval()
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    diff = float(np.abs(got - want).max())
    assert diff < 1e-4, f"torch model != onnxruntime on {ONNX_PATH}: max |diff| {diff}"
    print(f"torch = onnxruntime on {ONNX_PATH} (max |diff| {diff:.1e})")


def main():
    losses()
    model = build()
    onnx_model = onnx.load(ONNX_PATH)
    load_onnx_weights(model, onnx_model)
    check_against_onnxruntime(model)

    rng = np.random.default_rng(1234)
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    x.tofile(OUT + "bn_step_input.bin")

    model.train()
    # The ONNX export has no Dropout (it vanishes in export), so neither may the reference step:
    # smp's ASPP dropout sits before later BatchNorms and would change their batch statistics.
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    target = torch.from_numpy(rng.integers(0, 21, size=(2, 64, 64)))
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), target)
    loss.backward()
    opt.step()  # running statistics were updated during the forward pass above

    state = model.state_dict()
    index, blobs, offset = [], [], 0
    for i, node in enumerate(onnx_model.graph.node):
        if node.op_type != "BatchNormalization":
            continue
        mean_name, var_name = node.input[3], node.input[4]
        mean, var = state[torch_name(mean_name)].numpy(), state[torch_name(var_name)].numpy()
        index.append({"node": i, "running_mean": mean_name, "running_var": var_name,
                      "channels": int(mean.shape[0]), "offset": offset})
        blobs += [mean.astype(np.float32), var.astype(np.float32)]
        offset += 2 * mean.shape[0]
    np.concatenate(blobs).tofile(OUT + "bn_step.bin")

    json.dump({"input_shape": list(x.shape), "onnx": ONNX_PATH, "bn": index},
              open(OUT + "bn_step.json", "w"), indent=1)
    print(f"{len(index)} BN layers, {offset} values, loss {loss.item():.4f}")

    # Every convolution's weight gradient from the same backward pass (depthwise ones included:
    # segtune's burn-flex patch computes those itself).
    params = dict(model.named_parameters())
    index_g, blobs, offset = [], [], 0
    for i, node in enumerate(onnx_model.graph.node):
        if node.op_type != "Conv":
            continue
        name = node.input[1]
        grad = params[torch_name(name)].grad.numpy().astype(np.float32)
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        kept = grad.flatten() if groups > 1 else grad.flatten()[:2048]
        index_g.append({"node": i, "weight": name, "shape": list(grad.shape), "groups": int(groups),
                        "norm": float(np.linalg.norm(grad.astype(np.float64))), "stored": int(kept.size),
                        "offset": offset})
        blobs.append(kept)
        offset += kept.size
    # Every BatchNorm's scale and bias gradients, whole.
    for i, node in enumerate(onnx_model.graph.node):
        if node.op_type != "BatchNormalization":
            continue
        for slot, name in (("scale", node.input[1]), ("bias", node.input[2])):
            grad = params[torch_name(name)].grad.numpy().astype(np.float32).flatten()
            index_g.append({"node": i, "weight": name, "slot": slot, "shape": list(grad.shape), "groups": 1,
                            "norm": float(np.linalg.norm(grad.astype(np.float64))), "stored": int(grad.size),
                            "offset": offset})
            blobs.append(grad)
            offset += grad.size
    np.concatenate(blobs).tofile(OUT + "conv_grads.bin")
    target.numpy().astype(np.int64).tofile(OUT + "conv_grads_target.bin")
    json.dump({"input_shape": list(x.shape), "target_shape": list(target.shape), "loss": loss.item(),
               "conv": [e for e in index_g if "slot" not in e], "bn": [e for e in index_g if "slot" in e]},
              open(OUT + "conv_grads.json", "w"), indent=1)
    print(f"{sum('slot' not in e for e in index_g)} Conv layers and {sum('slot' in e for e in index_g)} BN scales and biases, {offset} gradient values")


if __name__ == "__main__":
    main()
