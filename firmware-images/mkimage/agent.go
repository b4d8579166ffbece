package main

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// aptHint says what Debian packages a missing C compiler comes from.
var aptHint = map[string]string{
	"aarch64-linux-gnu-gcc": "apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross",
	"x86_64-linux-gnu-gcc":  "apt-get install gcc-x86-64-linux-gnu libc6-dev-amd64-cross",
	"gcc":                   "apt-get install gcc libc6-dev",
}

// buildAgent cross-compiles the agent for arch into path, with the version
// and the release public key linked in (-X main.version, -X main.releaseKey;
// the linker ignores a -X whose variable does not exist).
func buildAgent(ctx context.Context, o options, arch, version, pubKey, path string) error {
	cc := o.cc[arch]
	if _, err := exec.LookPath(strings.Fields(cc)[0]); err != nil {
		hint := aptHint[cc]
		if hint == "" {
			hint = "install a C compiler for linux/" + arch + " and pass --cc-" + arch
		}
		return fmt.Errorf("C compiler %q for the %s agent (cgo: wasmtime) not found: %s", cc, arch, hint)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	ldflags := fmt.Sprintf("-s -w -X main.version=%s -X main.releaseKey=%s", version, pubKey)
	cmd := exec.CommandContext(ctx, o.goTool, "build", "-trimpath", "-ldflags", ldflags, "-o", path, "./edge-agent")
	cmd.Dir = o.root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1", "GOOS=linux", "GOARCH="+arch, "CC="+cc)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build (GOARCH=%s CC=%s): %v\n%s", arch, cc, err, out.String())
	}
	return nil
}

// binaryFacts is what packaging needs to know about a built agent.
type binaryFacts struct {
	depends     []string // Debian Depends for its shared libraries
	keyEmbedded bool     // the release public key is in the binary
}

var elfMachine = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// libPackage is the Debian package of each shared library the agent may
// link. An unknown one fails the build rather than ship a .deb that
// installs and then cannot start.
var libPackage = map[string]string{
	"libc.so.6": "libc6", "libm.so.6": "libc6", "libpthread.so.0": "libc6", "libdl.so.2": "libc6",
	"librt.so.1": "libc6", "libresolv.so.2": "libc6",
	"ld-linux-x86-64.so.2": "libc6", "ld-linux-aarch64.so.1": "libc6",
	"libgcc_s.so.1": "libgcc-s1",
}

// inspect checks the binary is for arch and derives its Depends: libc6 at
// the newest GLIBC_ symbol version it imports, and the package of every
// other library it needs.
func inspect(path, arch, pubKey string) (binaryFacts, error) {
	var facts binaryFacts
	f, err := elf.Open(path)
	if err != nil {
		return facts, err
	}
	defer f.Close()
	if f.Machine != elfMachine[arch] {
		return facts, fmt.Errorf("%s is built for %s, not %s", path, f.Machine, arch)
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return facts, err
	}
	syms, err := f.ImportedSymbols()
	if err != nil {
		return facts, err
	}
	var glibc []int
	for _, s := range syms {
		if v, ok := strings.CutPrefix(s.Version, "GLIBC_"); ok {
			if n := parseDotted(v); n != nil && slices.Compare(n, glibc) > 0 {
				glibc = n
			}
		}
	}
	pkgs := map[string]bool{}
	for _, l := range libs {
		p, ok := libPackage[l]
		if !ok {
			return facts, fmt.Errorf("%s links %s, whose Debian package mkimage does not know: add it to libPackage", path, l)
		}
		pkgs[p] = true
	}
	for _, p := range slices.Sorted(maps.Keys(pkgs)) {
		if p == "libc6" && glibc != nil {
			p = fmt.Sprintf("libc6 (>= %s)", joinDotted(glibc))
		}
		facts.depends = append(facts.depends, p)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return facts, err
	}
	facts.keyEmbedded = bytes.Contains(b, []byte(pubKey))
	return facts, nil
}

func parseDotted(s string) []int {
	var n []int
	for _, p := range strings.Split(s, ".") {
		i, err := strconv.Atoi(p)
		if err != nil {
			return nil
		}
		n = append(n, i)
	}
	return n
}

func joinDotted(n []int) string {
	s := make([]string, len(n))
	for i, v := range n {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, ".")
}
