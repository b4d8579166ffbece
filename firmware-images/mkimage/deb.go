package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	"github.com/goreleaser/nfpm/v2/files"
)

// Where the package puts things on the node. The unit's ExecStart,
// ReadWritePaths and ExecStartPre name the same paths.
const (
	debName      = "cloudskin-agent"
	binPath      = "/usr/bin/cloudskin-agent" // the factory slot; OTA slots live under the data dir
	unitPath     = "/lib/systemd/system/cloudskin-agent.service"
	configPath   = "/etc/cloudskin/agent.yaml"
	firstbootBin = "/usr/lib/cloudskin/firstboot"
	guidePath    = "/usr/share/doc/cloudskin-agent/operator-guide.md"
)

// Sources in the repository.
const (
	unitSrc     = "deploy/systemd/cloudskin-agent.service"
	debSrc      = "firmware-images/deb"
	guideSrc    = "docs/operator-guide.md"
	description = "CloudSkin edge agent\n Runs WebAssembly cells isolated in one process, ingests sensor streams\n over MQTT into a local write-ahead log that spills to object storage,\n and reports telemetry and energy to the CloudSkin console."
	debHomepage = "https://github.com/cloudskin/cloudskin"
	debSection  = "net"
	debPriority = "optional"
)

// debInfo describes the package of the agent binary bin for arch.
func debInfo(o options, arch, version, bin string, depends []string) *nfpm.Info {
	src := func(rel string) string { return filepath.Join(o.root, rel) }
	file := func(from, to string, mode os.FileMode) *files.Content {
		return &files.Content{Source: from, Destination: to, FileInfo: &files.ContentFileInfo{Mode: mode, Owner: "root", Group: "root"}}
	}
	conf := file(src(debSrc+"/agent.yaml"), configPath, 0o644)
	conf.Type = files.TypeConfig
	info := &nfpm.Info{
		Name:          debName,
		Arch:          arch,
		Platform:      "linux",
		Version:       debVersion(version),
		VersionSchema: "none", // debVersion already made it a Debian version
		Section:       debSection,
		Priority:      debPriority,
		Maintainer:    o.maintainer,
		Description:   description,
		Homepage:      debHomepage,
		Overridables: nfpm.Overridables{
			Depends: depends,
			Contents: files.Contents{
				file(bin, binPath, 0o755),
				file(src(unitSrc), unitPath, 0o644),
				conf,
				file(src(debSrc+"/firstboot"), firstbootBin, 0o755),
				file(src(guideSrc), guidePath, 0o644),
				{Destination: "/etc/cloudskin", Type: files.TypeDir, FileInfo: &files.ContentFileInfo{Mode: 0o755, Owner: "root", Group: "root"}},
			},
			Scripts: nfpm.Scripts{
				PostInstall: src(debSrc + "/postinst"),
				PreRemove:   src(debSrc + "/prerm"),
				PostRemove:  src(debSrc + "/postrm"),
			},
			Deb: nfpm.Deb{Compression: o.debCompr},
		},
	}
	return nfpm.WithDefaults(info)
}

// writeDeb packages bin for arch into dir and returns the .deb's path.
func writeDeb(o options, arch, version, bin, dir string, depends []string) (string, error) {
	info := debInfo(o, arch, version, bin, depends)
	pkg, err := nfpm.Get("deb")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, pkg.ConventionalFileName(info))
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return "", err
	}
	err = pkg.Package(info, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("package %s .deb: %w", arch, err)
	}
	return path, nil
}
