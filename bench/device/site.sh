# Sourced THERE (the GPU machine) by run.sh and mini_finding.sh, in the repo root, with .whl
# carried (bench/device/prepare.sh ran here): installs the carried packages into /tmp/site once
# (nothing of the machine's own Python changes) and puts them and the repo on PYTHONPATH.
if [ ! -d /tmp/site/lavis ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    tar xzf .whl/site-extra.tar.gz -C /tmp/site
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
