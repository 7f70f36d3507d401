# Sourced by bench/profile_train.sh and bench/gemm_trace.sh: one 1-epoch `segtune train` run of
# STEPS steps on a fresh synthetic set, under a wrapper command (perf, an environment).
#   train_run WORK CONFIG BATCH CROP STEPS [WRAPPER...]   (CONFIG: full = --bn train;
#   frozen = --freeze backbone --bn frozen). The run goes to WORK/run, its stderr to WORK/stderr.
train_run() {
  local work=$1 config=$2 batch=$3 crop=$4 steps=$5
  shift 5
  cargo build -q
  rm -rf "$work" && mkdir -p "$work"
  target/debug/segtune synth "$work/data" --classes 6 --train $((batch * steps)) --val 2 --size "$crop" --seed 1 >/dev/null
  local flags=(--bn train)
  [ "$config" = frozen ] && flags=(--freeze backbone --bn frozen)
  "$@" target/debug/segtune train --data "$work/data" --out "$work/run" --classes 6 --epochs 1 \
    --batch "$batch" --crop "$crop" "${flags[@]}" >/dev/null 2>"$work/stderr"
}
