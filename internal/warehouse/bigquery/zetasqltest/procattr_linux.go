//go:build linux

package zetasqltest

import "syscall"

// sysProcAttr kills the server with the test binary, even when the binary is killed.
func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }
