//go:build !linux

package zetasqltest

import "syscall"

func sysProcAttr() *syscall.SysProcAttr { return nil }
