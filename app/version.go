package app

import "runtime/debug"

// version is stamped at build time:
//
//	go build -ldflags "-X github.com/campaignd/dispatch/app.version=1.2.0" .
var version string

// Version is the stamped version or, for a plain go build, the VCS revision
// the go command recorded (with "+dirty" for uncommitted changes), else "dev".
func Version() string {
	if version != "" {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "+dirty"
			}
		}
	}
	if rev == "" {
		if v := info.Main.Version; v != "" && v != "(devel)" {
			return v
		}
		return "dev"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	return rev + modified
}
