package app

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencyDirection enforces main → app → features → platform:
// features never import each other or app, and platform imports no feature.
func TestDependencyDirection(t *testing.T) {
	const mod = "github.com/campaignd/dispatch/"
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "../...").Output()
	if err != nil {
		t.Skipf("go list unavailable: %v", err)
	}
	features := map[string]bool{mod + "campaign": true, mod + "customer": true, mod + "messaging": true}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg, imports := fields[0], fields[1:]
		for _, imp := range imports {
			if !strings.HasPrefix(imp, mod) {
				continue
			}
			switch {
			case features[pkg] && (features[imp] || imp == mod+"app"):
				t.Errorf("feature %s imports %s; declare an interface and let app wire it", pkg, imp)
			case strings.HasPrefix(pkg, mod+"platform") && (features[imp] || imp == mod+"app"):
				t.Errorf("platform package %s imports %s", pkg, imp)
			}
		}
	}
}
