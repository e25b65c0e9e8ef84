#!/bin/bash
# serve benchmark, bfloat16 decoding: uvicorn's HTTP parser h11 (pure Python, used when httptools is missing) vs httptools; ABBA.
# Then, with httptools, the server's TensorFlow thread pools: 1 inter-op thread; 1 intra-op thread.
cd /work/main
. .venv/bin/activate
while ! grep -q ALLDONE /root/runs/es-tied-wd01.log; do sleep 15; done
sleep 20
B="python scripts/bench_serve.py /root/runs/spa-eng-bf16-3ep --set decode.dtype=bfloat16"
for mode in h11 httptools httptools h11; do
  if [ $mode = h11 ]; then pip uninstall -y -q httptools; else pip install -q /tmp/whl/httptools-*.whl; fi
  python -c "import importlib.util as u; print('httptools importable:', u.find_spec('httptools') is not None)"
  n=$(ls /root/runs/bench-http | grep -c "^$mode-.*jsonl" )
  date
  $B > /root/runs/bench-http/$mode-$((n+1)).jsonl 2> /root/runs/bench-http/$mode-$((n+1)).err
  tail -1 /root/runs/bench-http/$mode-$((n+1)).jsonl
done
pip install -q /tmp/whl/httptools-*.whl
date
$B --server-env TF_NUM_INTEROP_THREADS=1 > /root/runs/bench-http/httptools-inter1.jsonl 2> /root/runs/bench-http/httptools-inter1.err
tail -1 /root/runs/bench-http/httptools-inter1.jsonl
date
$B --server-env TF_NUM_INTRAOP_THREADS=1 > /root/runs/bench-http/httptools-intra1.jsonl 2> /root/runs/bench-http/httptools-intra1.err
tail -1 /root/runs/bench-http/httptools-intra1.jsonl
date
echo BENCHDONE
