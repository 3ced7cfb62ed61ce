#!/usr/bin/env bash
# What can be checked of the Nix side without nixpkgs (and so without building anything):
#
#   1. every .nix file parses                    nix-instantiate --parse
#   2. no lint findings                          statix check (skipped if statix is not on PATH)
#   3. no unused bindings                        deadnix --fail
#   4. formatted                                 vmcheck-alejandra --check (the flake's formatter)
#   5. evaluate, to JSON                         nix-instantiate --eval --strict --json:
#        nix/tests/sample.nix        -> OUT/driver-config.sample.json (a DriverConfig)
#        nix/tests/flake-eval.nix    -> OUT/flake.json: flake.nix's real outputs function, with
#                                       nix/make-test.nix, nix/scenario-tests.nix and nix/modules,
#                                       against the nixpkgs stand-in nix/tests/stub-nixpkgs (a lib
#                                       subset, a module system, eval-config.nix, qemu-vm.nix)
#                                    -> OUT/driver-config.<scenario>.json, one per check of
#                                       vmcheck's driver (the <scenario>-nixos-test checks, of
#                                       nixpkgs' driver, are in OUT/flake.json: nixosTests)
#        ... .template               -> OUT/template.json: the template's flake.nix (nix/templates/
#                                       storage-test) with this flake as its input vmcheck and
#                                       nix/tests/template-checkout as its source: its driver
#                                       (lib.buildDriver) and its check (makeTest with `driver`)
#   6. the card's commands resolve             nix eval (Nix 2.8, nix-command and flakes on):
#        `.#checks.fio_nvme_basic`, its `.driver` and `.driverInteractive`, found where
#        `nix build` finds them (legacyPackages.x86_64-linux.checks), with the stand-in as the
#        input nixpkgs (--override-input nixpkgs path:nix/tests/stub-nixpkgs); a scenario left out
#        of the checks is not found, and Nix says where it looked
#   7. bad input is refused, with the field named: the driver configuration function, and
#      makeTest/the modules (an option that does not exist, a wrong type, the guest agent off,
#      a node name the driver refuses, a package set for another system or without nixpkgs'
#      `_type = "pkgs"` mark, a driver without a main program, a Cargo.lock missing or with a
#      git dependency and no way to fetch it, ...).
#
# tests/nix_config.rs reads the same evaluations: it parses every driver configuration with the
# driver's own parser, checks the checks against `vmcheck list --json`, and fails when
# nix/scenarios.json differs from what the driver prints.
#
# Usage: nix/check.sh [OUT_DIR]       (or VMCHECK_NIX_OUT=OUT_DIR; default: a temporary directory)
#
# Needs on PATH: nix-instantiate and nix (Debian: apt-get install nix-bin), deadnix and vmcheck-alejandra
# (cargo install --locked deadnix@1.3.1; cargo install --locked --path nix/tools/alejandra).
# statix is not published on crates.io (the crate named statix there is an unrelated web
# server), so it runs when it is on PATH and is skipped with a message otherwise;
# VMCHECK_NIX_REQUIRE_STATIX=1 makes its absence an error.
#
# Evaluation uses the dummy store (--option store dummy://): nothing is written under /nix, and
# it works as any user. Step 6 needs the flake's source in a store: it uses a store of its own,
# the directory OUT/store (a copy of the files git sees, OUT/flake, is put there), and no network.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

out=${1:-${VMCHECK_NIX_OUT:-}}
if [[ -z $out ]]; then
  out=$(mktemp -d "${TMPDIR:-/tmp}/vmcheck-nix-check.XXXXXX")
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)

step() { printf '\n== nix: %s\n' "$*"; }
die() {
  printf 'nix/check.sh: %s\n' "$*" >&2
  exit 1
}
need() {
  command -v "$1" >/dev/null || die "$1 is not on PATH; $2"
}

need nix-instantiate "install it with: apt-get install -y nix-bin"
need nix "install it with: apt-get install -y nix-bin"
need deadnix "install it with: cargo install --locked deadnix --version 1.3.1"
need vmcheck-alejandra "install it with: cargo install --locked --path nix/tools/alejandra"

nix_eval() { nix-instantiate --option store dummy:// --eval --strict --json "$@"; }
# A string, as it is (nix-instantiate prints strings quoted).
nix_raw() { nix --extra-experimental-features nix-command --store dummy:// eval --impure --raw --expr "$1"; }

# The repository's Nix files, tracked or new, without build output.
mapfile -t files < <(find . \( -name .git -o -name target -o -name 'result*' \) -prune -o -type f -name '*.nix' -print | sed 's|^\./||' | sort)
[[ ${#files[@]} -gt 0 ]] || die "no .nix files found under $repo"

step "parse ${#files[@]} files (nix-instantiate --parse)"
for f in "${files[@]}"; do
  nix-instantiate --option store dummy:// --parse "$f" >/dev/null || die "$f does not parse"
done
echo "ok: ${files[*]}"

step "statix check"
if command -v statix >/dev/null; then
  statix check . || die "statix reported findings (statix fix applies its suggestions)"
  echo "ok: $(statix --version 2>/dev/null | head -n1)"
elif [[ ${VMCHECK_NIX_REQUIRE_STATIX:-} == 1 ]]; then
  die "statix is not on PATH and VMCHECK_NIX_REQUIRE_STATIX=1"
else
  echo "SKIPPED: statix is not on PATH (it is not on crates.io; build it from its source to run it)"
fi

step "deadnix --fail"
deadnix --fail "${files[@]}" || die "deadnix found unused code"
echo "ok: $(deadnix --version)"

step "format (vmcheck-alejandra --check; nix fmt formats)"
vmcheck-alejandra --check "${files[@]}" || die "unformatted Nix files: run nix fmt (or vmcheck-alejandra FILE...)"

step "evaluate to JSON in $out"
nix_eval nix/tests/sample.nix >"$out/driver-config.sample.json" || die "nix/tests/sample.nix does not evaluate"
echo "ok: $out/driver-config.sample.json"
nix_eval --expr '(import ./nix/tests/flake-eval.nix).summary' >"$out/flake.json" ||
  die "flake.nix's outputs do not evaluate against the nixpkgs stand-in (nix/tests/flake-eval.nix)"
echo "ok: $out/flake.json"
mapfile -t scenarios < <(nix_eval --expr 'builtins.attrNames (import ./nix/tests/flake-eval.nix).summary.checks' | tr -d '[]"' | tr ',' '\n')
[[ ${#scenarios[@]} -gt 0 && -n ${scenarios[0]} ]] || die "the flake has no checks"
for s in "${scenarios[@]}"; do
  nix_eval --expr "(import ./nix/tests/flake-eval.nix).summary.checks.\"$s\".driverConfiguration" >"$out/driver-config.$s.json" ||
    die "the driver configuration of check $s does not evaluate"
  echo "ok: $out/driver-config.$s.json"
done

nix_eval --expr '(import ./nix/tests/flake-eval.nix).template' >"$out/template.json" ||
  die "the template's flake.nix does not evaluate against this flake and the nixpkgs stand-in (nix/tests/flake-eval.nix, template)"
echo "ok: $out/template.json"

# What the template promises, and what makeTest does with a driver of its own.
holds() {
  local what=$1 expr=$2
  [[ $(nix_eval --expr "let f = import ./nix/tests/flake-eval.nix; in $expr") == true ]] || die "does not hold: $what ($expr)"
  echo "ok: $what"
}
holds "templates.default and templates.storage-test have a path with a flake.nix and a description" \
  'builtins.all (t: builtins.elem "flake.nix" t.files && builtins.elem "Cargo.toml" t.files && t.description != "") (builtins.attrValues f.summary.templates) && f.summary.templates.default == f.summary.templates.storage-test'
holds "the template's check runs its own driver (build, .driver, .driverInteractive)" \
  'let t = f.template.checks.disk_verify; in t.driverPackage == "storage-tests-0.1.0" && builtins.match ".*\nstorage-tests run --config [^ ]+ --global-timeout.*" t.buildCommand != null && builtins.match ".*-storage-tests-0.1.0/bin/storage-tests \"[$]command\" --config .*" t.driver.text != null && builtins.match ".*-storage-tests-0.1.0/bin/storage-tests repl --config .*" t.driverInteractive.text != null'
holds "the template's checks are also legacyPackages.x86_64-linux.checks" 'f.template.legacyChecks == f.template.checkPaths'
holds "the template's driver: a [[bin]] built alone, untested in the build, vmcheck from git by builtins.fetchGit" \
  'let d = f.template.driver; in d.mainProgram == "storage-tests" && d.cargoBuildFlags == [ "--bin" "storage-tests" ] && !d.doCheck && builtins.any (c: c.name == "vmcheck" && c.fetch == "builtins.fetchGit") d.crates'
holds "buildDriver from a path, with pname, version and bin given, passing the rest to buildRustPackage" \
  'let d = f.outputs.lib.buildDriver { system = "x86_64-linux"; src = ./nix/tests/template-checkout; pname = "p"; version = "1"; bin = "b"; cargoBuildFlags = [ "--locked" ]; buildInputs = [ f.pkgs.fio ]; }; in d.name == "p-1" && d.meta.mainProgram == "b" && d.cargoBuildFlags == [ "--bin" "b" "--locked" ] && map (p: p.pname) d.buildInputs == [ "fio" ] && !d.doCheck && !(d ? bin)'
holds "makeTest with a driver of its own: its main program everywhere, vmcheck nowhere" \
  'let t = f.testSummary { name = "t"; scenario = "fio_nvme_basic"; driver = f.pkgs.writeShellScriptBin "my-driver" ""; nodes.target = { }; nodes.initiator = { }; }; in builtins.match ".*\nmy-driver run --config .*" t.buildCommand != null && builtins.match ".*/bin/my-driver \"[$]command\" --config .*" t.driver.text != null && builtins.match ".*/bin/my-driver repl --config .*" t.driverInteractive.text != null && builtins.match ".*vmcheck (run|repl).*" (t.buildCommand + t.driver.text + t.driverInteractive.text) == null && t.nativeBuildInputs == [ "my-driver" "qemu-host-cpu-only" ]'
holds "makeTest and the target module take vmcheck from the package set given (its overlays reach it); from the flake's own, it is packages.vmcheck" \
  'let patched = f.pkgs.extend (final: prev: { rustPlatform = prev.rustPlatform // { buildRustPackage = a: prev.rustPlatform.buildRustPackage (a // { pname = "vmcheck-from-overlay"; }); }; }); nodes = { target.imports = [ f.modules.target ]; initiator.imports = [ f.modules.initiator ]; }; t = f.testSummary { name = "t"; scenario = "fio_nvme_basic"; system = null; pkgs = patched; inherit nodes; }; own = f.outputs.lib.makeTest { name = "t"; scenario = "fio_nvme_basic"; system = "x86_64-linux"; inherit nodes; }; in t.driverPackage == "vmcheck-from-overlay-0.1.0" && builtins.match ".*-vmcheck-from-overlay-0.1.0/bin/vmcheck-target.*" t.nodes.target.units.vmcheck-target.ExecStart != null && own.driverPackage.outPath == f.outputs.packages.x86_64-linux.vmcheck.outPath && own.nodes.target.config.vmcheck.target.package.outPath == f.outputs.packages.x86_64-linux.vmcheck.outPath'
holds "the flake's checks leave out exactly the scenarios that migrate (nixpkgs' VMs mount 9p shares), saying why" \
  'let out = builtins.attrNames f.summary.leftOutOfNixChecks; in out == [ "balloon_migrate" "lifecycle_migrate_fio" "lifecycle_save_restore" ] && builtins.all (n: !(f.summary.checks ? ${n})) out && builtins.all (why: builtins.match ".*9p export is mounted.*" why != null) (builtins.attrValues f.summary.leftOutOfNixChecks)'
holds "a migrating scenario evaluates on machines without 9p mounts (store image, no shared directories), and with a driver of ones own the listing is not consulted" \
  'let vm1 = { imports = [ f.modules.initiator ]; virtualisation.useNixStoreImage = true; virtualisation.sharedDirectories = f.lib.mkForce { }; }; t = f.testSummary { name = "t"; scenario = "balloon_migrate"; nodes = { inherit vm1; }; }; own = f.testSummary { name = "t"; scenario = "balloon_migrate"; driver = f.pkgs.writeShellScriptBin "my-driver" ""; nodes.vm1.imports = [ f.modules.initiator ]; }; in t.nodes.vm1.migrates && t.nodes.vm1.mounted9p == [ ] && !own.nodes.vm1.migrates && own.nodes.vm1.mounted9p == [ "/nix/.ro-store" "/tmp/shared" "/tmp/xchg" ]'
holds "a <scenario>-nixos-test check per scenario that runs in a guest: nixpkgs' test driver (runNixOSTest), its .driver and .driverInteractive, vmcheck inside the first initiator" \
  'let ts = f.summary.nixosTests; in builtins.attrNames ts == map (s: s + "-nixos-test") f.summary.runsInGuest && builtins.all (n: let t = ts.${n}; in t.name == "vm-test-run-${n}" && t.requiredSystemFeatures == [ "nixos-test" "kvm" ] && t.driver.mainProgram == "nixos-test-driver" && t.driverInteractive.mainProgram == "nixos-test-driver" && builtins.match ".*--add-flags. .--interactive.*" t.driverInteractive.buildCommand != null && builtins.match ".*--interactive.*" t.driver.buildCommand == null && builtins.match ".*nixos-test-driver -o [$]out.*" t.buildCommand != null && builtins.match ".*[.]execute[(]\"vmcheck run --local [^ ]+ (--peer [^ ]+ )+--global-timeout [0-9]+ --out /tmp/vmcheck-out --junit /tmp/vmcheck-out/junit.xml [a-z0-9_]+ 2>&1\".*[.]copy_from_vm[(]\"/tmp/vmcheck-out\".*" t.testScript != null) (builtins.attrNames ts)'
holds "the nixos-test nodes have the roles alone: no guest contract, nixpkgs' addresses and host names, the firewall off, vmcheck on the initiators" \
  'let t = f.summary.nixosTests.fio_nvme_basic-nixos-test; in !t.nodes.target.guestContract && !t.nodes.initiator.guestContract && t.nodes.initiator.interfaces == { eth1 = [ "192.168.1.1/24" ]; } && t.nodes.target.interfaces == { eth1 = [ "192.168.1.2/24" ]; } && t.nodes.initiator.extraHosts == "192.168.1.1 initiator\n192.168.1.2 target\n" && !t.nodes.target.firewall && builtins.elem "vmcheck" t.nodes.initiator.packages && t.nodes.target.units.vmcheck-target.ExecStart != null && builtins.elem "-device nvme,id=disk0,drive=vmcheck-disk0,serial=vmcheck-disk0" t.nodes.target.qemuOptions'
holds "the stand-in's runNixOSTest calls a testScript function with the evaluated nodes" \
  '(f.nixosTestSummary { name = "t"; nodes.a = { }; testScript = { nodes, ... }: "a.succeed(\"ping -c1 ${nodes.a.networking.primaryIPAddress}\")"; }).testScript == "a.succeed(\"ping -c1 192.168.1.1\")"'
holds "the checks are also legacyPackages.x86_64-linux.checks (nix build .#checks.<name>)" 'f.summary.legacyChecks == f.summary.checkPaths && f.summary.systems.legacyPackages == [ "x86_64-linux" ]'

# The card's command, `nix build .#checks.fio_nvme_basic`, resolved by the Nix at hand (flakes
# need nix-command and flakes turned on in Nix 2.8): `nix eval` resolves an installable as
# `nix build` does (packages.<system>.X, legacyPackages.<system>.X, X), with the stand-in given
# as the input nixpkgs. The flake is a copy of the files git sees (as a git flake would: no
# target/, new files included) in OUT/flake, evaluated in a store of its own, OUT/store (the
# dummy store cannot hold the flake's source), without the network.
# `.driver` as nixpkgs' takes it: -I or --interactive anywhere opens the REPL, everything else is
# the run's. Its evaluated text runs here with a stand-in for the driver's program that writes
# down its arguments (tests/nix_config.rs runs it with the real vmcheck, into the REPL).
nix_raw '(import ./nix/tests/flake-eval.nix).summary.checks.fio_nvme_basic.driver.text' >"$out/driver-script" ||
  die "the driver script of check fio_nvme_basic does not evaluate"
program=$(nix_raw '"${(import ./nix/tests/flake-eval.nix).outputs.packages.x86_64-linux.vmcheck}/bin/vmcheck"')
config=$(nix_raw '(import ./nix/tests/flake-eval.nix).summary.checks.fio_nvme_basic.configFile.path')
printf '#!/usr/bin/env bash\nprintf "%%s|" "$@" >"%s"\n' "$out/driver-args" >"$out/fake-driver"
chmod +x "$out/fake-driver"
sed -i "s|$program|$out/fake-driver|" "$out/driver-script"
grep -q "$out/fake-driver" "$out/driver-script" || die "the driver script does not run $program: $(cat "$out/driver-script")"
driver_gets() {
  local expect=$1 got
  shift
  bash "$out/driver-script" "$@" || die ".driver $* failed"
  got=$(<"$out/driver-args")
  [[ $got == "$expect|" ]] || die ".driver $*: the driver's program got '$got' (arguments ended by |), not '$expect|'"
  echo "ok: .driver $* -> $expect"
}
driver_gets "run|--config|$config"
driver_gets "run|--config|$config|--out|./logs|--junit|./j.xml|--keep-vm-state" --out ./logs --junit ./j.xml --keep-vm-state
driver_gets "repl|--config|$config" -I
driver_gets "repl|--config|$config" --interactive
driver_gets "repl|--config|$config|--keep-vm-state" --keep-vm-state -I
driver_gets "run|--config|$config|--out|a b" --out "a b"

step "the card's commands resolve: nix build .#checks.fio_nvme_basic, .driver ($(nix --version))"
flake="$out/flake"
rm -rf "$flake"
mkdir -p "$flake"
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
  git -C "$repo" ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done |
    tar --null -T - -cf - | tar -xf - -C "$flake"
else
  tar --exclude=./target --exclude='./result*' -cf - . | tar -xf - -C "$flake"
fi
nix_flake() {
  (cd "$flake" && XDG_CACHE_HOME="$out/cache" nix --extra-experimental-features 'nix-command flakes' \
    --store "$out/store" --option build-users-group '' \
    "$1" --no-write-lock-file --override-input nixpkgs path:./nix/tests/stub-nixpkgs "${@:2}")
}
resolves() {
  local installable=$1 apply=$2 expect=$3 got
  got=$(nix_flake eval --json "$installable" --apply "$apply" 2>"$out/nix-eval.err") ||
    die "nix eval $installable failed: $(cat "$out/nix-eval.err")"
  [[ $got == "$expect" ]] || die "nix eval $installable --apply '$apply' gave $got, not $expect"
  echo "ok: $installable -> $got"
}
resolves .#checks.fio_nvme_basic 't: t.name' '"vmcheck-test-fio_nvme_basic"'
resolves .#checks.fio_nvme_basic.driver 'd: [ d.name d.meta.mainProgram ]' '["vmcheck-driver","vmcheck-driver"]'
resolves .#checks.fio_nvme_basic.driverInteractive 'd: d.name' '"vmcheck-driver"'
resolves .#checks.fio_nvme_basic-nixos-test 't: t.name' '"vm-test-run-fio_nvme_basic-nixos-test"'
resolves .#checks.fio_nvme_basic-nixos-test.driver 'd: [ d.name d.meta.mainProgram ]' '["nixos-test-driver-fio_nvme_basic-nixos-test","nixos-test-driver"]'
resolves .#checks.fio_nvme_basic-nixos-test.driverInteractive 'd: d.meta.mainProgram' '"nixos-test-driver"'
if nix_flake eval --json .#checks.balloon_migrate --apply 't: t.name' >/dev/null 2>"$out/nix-eval.err"; then
  die "nix eval .#checks.balloon_migrate resolved; it is left out of the checks"
fi
grep -q "does not provide attribute 'packages.x86_64-linux.checks.balloon_migrate', 'legacyPackages.x86_64-linux.checks.balloon_migrate' or 'checks.balloon_migrate'" "$out/nix-eval.err" ||
  die "nix eval .#checks.balloon_migrate did not say where it looked: $(cat "$out/nix-eval.err")"
echo "ok: .#checks.balloon_migrate is not found, where Nix looked said"

step "bad test definitions are refused, naming the field"
refused() {
  local expect=$1 args=$2 err
  if err=$(nix_eval --expr "import ./nix/driver-config.nix { $args }" 2>&1 >/dev/null); then
    die "accepted, should have been refused: { $args }"
  fi
  [[ $err == *"$expect"* ]] || die "refused { $args } without saying \"$expect\": $err"
  echo "ok: refused ($expect)"
}
ok_machine='startScript = "/nix/store/x-vm/bin/run-t-vm";'
refused "machine name" "name = \"t\"; scenario = \"s\"; machines.\"9t\" = { $ok_machine };"
refused "address" "name = \"t\"; scenario = \"s\"; machines.t = { $ok_machine address = \"192.0.2.300\"; };"
refused "startScript" "name = \"t\"; scenario = \"s\"; machines.t = { startScript = \"relative\"; };"
refused "unknown attribute" "name = \"t\"; scenario = \"s\"; machines.t = { $ok_machine vlan = 1; };"
refused "globalTimeout" "name = \"t\"; scenario = \"s\"; globalTimeout = 0; machines = { };"
refused "scenario" "name = \"t\"; scenario = \"\"; machines = { };"

# makeTest, the modules and the scenario mapping, through the flake (nix/tests/flake-eval.nix).
refused_test() {
  local expect=$1 expr=$2 err
  if err=$(nix_eval --expr "let f = import ./nix/tests/flake-eval.nix; in $expr" 2>&1 >/dev/null); then
    die "accepted, should have been refused: $expr"
  fi
  [[ $err == *"$expect"* ]] || die "refused $expr without saying \"$expect\": $err"
  echo "ok: refused ($expect)"
}
refused_test "does not exist" 'f.testSummary { name = "t"; nodes.target.vmcheck.adress = "192.0.2.1"; }'
refused_test "is not of type" 'f.testSummary { name = "t"; nodes.target.virtualisation.memorySize = "1G"; }'
refused_test "guest agent" 'f.testSummary { name = "t"; nodes.target.virtualisation.qemu.guestAgent.enable = false; }'
refused_test "machine name" 'f.testSummary { name = "t"; nodes.target_ = { }; }'
refused_test "eth0" 'f.testSummary { name = "t"; nodes.target = { imports = [ f.modules.target ]; vmcheck.testInterfaces = [ "eth0" ]; }; }'
refused_test "one name per vlan" 'f.testSummary { name = "t"; nodes.target = { vmcheck.vlans = [ 1 2 ]; vmcheck.testInterfaces = [ "eth1" ]; }; }'
refused_test "this one mounts /nix/.ro-store (9p tag nix-store), /tmp/shared (9p tag shared), /tmp/xchg (9p tag xchg)" 'f.testSummary { name = "t"; scenario = "balloon_migrate"; nodes.vm1.imports = [ f.modules.initiator ]; }'
refused_test "x86_64-linux only" 'f.testSummary { name = "t"; system = null; pkgs = (import ./nix/tests/stub-nixpkgs).legacyPackages.aarch64-linux; nodes.target = { }; }'
refused_test "is not of type \`Nixpkgs package set'" 'f.testSummary { name = "t"; system = null; pkgs = removeAttrs f.pkgs [ "_type" ]; nodes.target = { }; }'
refused_test "accel" 'f.testSummary { name = "t"; accel = "hvf"; nodes.target = { }; }'
refused_test "tcgTimeoutFactor" 'f.testSummary { name = "t"; tcgTimeoutFactor = 0; nodes.target = { }; }'
refused_test "nodes is empty" 'f.testSummary { name = "t"; nodes = { }; }'
refused_test "has no meta.mainProgram" 'f.testSummary { name = "t"; driver = f.pkgs.writeText "driver" ""; nodes.target = { }; }'
refused_test "must be a package" 'f.testSummary { name = "t"; driver = "vmcheck"; nodes.target = { }; }'
refused_test "must be a file name" 'f.testSummary { name = "t"; driver = f.pkgs.writeShellScriptBin "my driver" ""; nodes.target = { }; }'
refused_test "Cargo.lock does not exist" 'f.driverSummary { src = ./nix/templates/storage-test; }'
refused_test "No hash was found while vendoring the git dependency vmcheck-0.1.0" 'f.driverSummary { src = ./nix/tests/template-checkout; cargoLock.lockFile = ./nix/tests/template-checkout/Cargo.lock; }'
refused_test "but there is no corresponding git dependency" 'f.driverSummary { src = ./nix/tests/template-checkout; cargoLock = { lockFile = ./nix/tests/template-checkout/Cargo.lock; outputHashes."vmcheck-0.2.0" = ""; }; }'
# nixpkgs' test framework, through the stand-in's pkgs.testers.runNixOSTest.
refused_test "The option \`globalTimout in the argument that was passed to pkgs.runNixOSTest' does not exist" 'f.nixosTestSummary { name = "t"; nodes.a = { }; testScript = ""; globalTimout = 1; }'
refused_test "The option \`virtualisation.memorysize in" 'f.nixosTestSummary { name = "t"; nodes.a.virtualisation.memorysize = 2048; testScript = ""; }'
refused_test "A definition for option \`testScript' is not of type" 'f.nixosTestSummary { name = "t"; nodes.a = { }; testScript = 1; }'
refused_test "A definition for option \`testScript.<function body>' is not of type \`string'" 'f.nixosTestSummary { name = "t"; nodes.a = { }; testScript = { nodes, ... }: builtins.attrNames nodes; }'
refused_test "The option \`vmcheck.address in" 'f.nixosTestSummary { name = "t"; nodes.a = { imports = [ f.modules.initiator-role ]; vmcheck.address = "192.0.2.1"; }; testScript = ""; }'
refused_test "has no NixOS module" '((f.scenarioTests { scenarios.s.nodes = [ { name = "x"; role = "storage"; address = "192.0.2.1"; memory_mib = 512; cpus = 1; vlans = [ 1 ]; disks = [ ]; } ]; }).s.nodes.x { lib = f.lib; }).imports'

printf '\nnix/check.sh: all Nix checks passed (JSON in %s)\n' "$out"
