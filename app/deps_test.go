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
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	// featureOf names the feature a package lives in ("" outside features).
	featureOf := func(pkg string) string {
		for f := range features {
			if strings.HasPrefix(pkg, f+"/") {
				return f
			}
		}
		return ""
	}
	// featureImports lists, per package, the features and their
	// sub-packages it imports from outside its own feature.
	featureImports := map[string][]string{}
	for _, line := range lines {
		fields := strings.Fields(line)
		for _, imp := range fields[1:] {
			if own := featureOf(fields[0]); (features[imp] || featureOf(imp) != "") && featureOf(imp) != own && imp != own {
				featureImports[fields[0]] = append(featureImports[fields[0]], imp)
			}
		}
	}
	for _, line := range lines {
		fields := strings.Fields(line)
		pkg, imports := fields[0], fields[1:]
		for _, imp := range imports {
			if !strings.HasPrefix(imp, mod) {
				continue
			}
			switch {
			case features[pkg] && (features[imp] || imp == mod+"app"):
				t.Errorf("feature %s imports %s; declare an interface and let app wire it", pkg, imp)
			case features[pkg] && featureOf(imp) != "" && featureOf(imp) != pkg:
				// A capability with its own room inside a feature (the
				// template language, say) may serve another feature only
				// as a leaf: it must import no feature itself.
				if leaks := featureImports[imp]; len(leaks) > 0 {
					t.Errorf("feature %s imports %s, which imports %v; only leaf sub-packages may be shared", pkg, imp, leaks)
				}
			case strings.HasPrefix(pkg, mod+"platform") && (features[imp] || imp == mod+"app"):
				t.Errorf("platform package %s imports %s", pkg, imp)
			}
		}
	}
}
