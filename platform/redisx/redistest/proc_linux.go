package redistest

import (
	"os/exec"
	"syscall"
)

// dieWithParent has the kernel kill cmd when the test binary exits, even by
// a timeout's panic or a SIGKILL, so no server outlives its tests.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
