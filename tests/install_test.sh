#!/usr/bin/env bash
# `make install` into a temporary prefix, then use it as a user would, away
# from the checkout and with LD_LIBRARY_PATH unset: the installed tool runs
# and finds the installed model by itself; the README's C program (cut out
# of README.md between its markers, so the two cannot drift) and a small
# program build with pkg-config only (shared, and libbdh.a with --static)
# and run. Then `make uninstall` must leave no file behind.
set -euo pipefail
build=${1:-build}
repo=$(pwd)
prefix=$(mktemp -d /tmp/bdh-install-XXXXXX)
work=$(mktemp -d /tmp/bdh-install-work-XXXXXX)
trap 'rm -rf "$prefix" "$work"' EXIT
make -s install BUILD="$build" PREFIX="$prefix" >/dev/null
unset LD_LIBRARY_PATH BDH_MODEL
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
tiny="$repo/tests/data/golden/tiny.model.safetensors"
cat > "$work/prog.c" <<'C'
#include <bdh.h>
#include <stdio.h>
int main(int argc, char **argv)
{
    bdh_model *m;
    bdh_state *s;
    float logits[256];
    if (bdh_model_load(argv[1], NULL, &m) != BDH_OK || bdh_state_new(m, &s) != BDH_OK) {
        fprintf(stderr, "%s\n", bdh_last_error());
        return 1;
    }
    int rc = bdh_step(s, 'A', logits);
    bdh_state_free(s);
    bdh_model_free(m);
    return rc;
}
C
sed -n '/^<!-- c-example/,/^<!-- \/c-example -->/p' README.md | sed '1,2d;$d' | sed '$d' > "$work/readme.c"
pass=0 fail=0
check() { if "$@"; then pass=$((pass + 1)); else echo "install: FAILED: $*"; fail=$((fail + 1)); fi; }
for f in include/bdh.h lib/libbdh.a lib/libbdh.so.0 lib/pkgconfig/bdh.pc bin/bdh share/bdh/shakespeare.safetensors; do
    check test -e "$prefix/$f"
done
check test -L "$prefix/lib/libbdh.so"
# the version lives in include/bdh.h (the Makefile reads it from there too)
version=$(for part in MAJOR MINOR PATCH; do sed -n "s/^#define BDH_VERSION_$part \([0-9]*\)\$/\1/p" include/bdh.h; done | paste -sd.)
check test "$(pkg-config --modversion bdh)" = "$version"
check bash -c "objdump -p '$prefix/lib/libbdh.so' | grep -q 'SONAME.*libbdh.so.0'"
check bash -c "readelf -d '$prefix/bin/bdh' | grep -q 'RUNPATH.*\\\$ORIGIN/../lib'"

# ldconfig for a system prefix only (make -n: what install would run)
ldconfig_runs() { make -s -n install BUILD="$build" "$@" | grep -qx ldconfig; }
check ldconfig_runs PREFIX=/usr
check ldconfig_runs PREFIX=/usr/local/
check bash -c "! make -s -n install BUILD='$build' PREFIX=/usr/local DESTDIR=/tmp/stage | grep -qx ldconfig"
check bash -c "! make -s -n install BUILD='$build' PREFIX='$prefix' | grep -qx ldconfig"

cd "$work" # nothing of the checkout is reachable by a relative path from here
# the tool: its library through RUNPATH, its model from PREFIX/share/bdh
check bash -c "'$prefix/bin/bdh' info '$tiny' > /dev/null"
check bash -c "'$prefix/bin/bdh' generate -p ROMEO: -n 20 --seed 1 > gen.txt && test \$(wc -c < gen.txt) -ge 20"
ln -s "$prefix/bin/bdh" "$work/bdh-link" # through a symlink too (/proc/self/exe is the target)
check bash -c "'$work/bdh-link' generate -p ROMEO: -n 5 --seed 1 > /dev/null"
# the README's program, as a user builds it (run-time library path via rpath)
check test -s readme.c
check cc -std=c11 -Wall -Wextra -Werror readme.c -o readme $(pkg-config --cflags --libs bdh) -Wl,-rpath,"$prefix/lib"
check bash -c "./readme '$prefix/share/bdh/shakespeare.safetensors' | grep -q '^after .ROMEO:. the likeliest next byte is [0-9]'"
check cc prog.c -o prog_shared $(pkg-config --cflags --libs bdh) -Wl,-rpath,"$prefix/lib"
check ./prog_shared "$tiny"
# --static: libbdh.a linked in; its dependencies come from Libs.private (as
# shared libraries on Debian, which ships no libcjson.a; see docs/install.md)
check cc prog.c -o prog_static $(pkg-config --cflags bdh) $(pkg-config --static --libs bdh | sed 's/-lbdh\b/-l:libbdh.a/')
check ./prog_static "$tiny"
check bash -c "! ldd ./prog_static | grep -q libbdh"
cd "$repo"

make -s uninstall BUILD="$build" PREFIX="$prefix" >/dev/null
left=$(find "$prefix" ! -type d)
check test -z "$left"
[ -z "$left" ] || echo "install: left after uninstall: $left"
echo "install: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
