//go:build !linux

package redistest

import "os/exec"

// dieWithParent: only Linux can tie a child's life to its parent's; there
// the servers are stopped by the tests' cleanup alone.
func dieWithParent(*exec.Cmd) {}
