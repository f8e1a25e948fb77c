package main

import (
	"os"
	"os/exec"
	"runtime/debug"
	"strings"
	"testing"
)

func TestBuildID(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The Go build ID of this test binary, as the toolchain reads it.
	out, err := exec.Command("go", "tool", "buildid", exe).Output()
	if err != nil {
		t.Fatalf("go tool buildid: %v", err)
	}
	goID := strings.TrimSpace(string(out))
	if goID == "" {
		t.Fatal("go tool buildid printed nothing")
	}
	for _, tc := range []struct {
		name string
		info *debug.BuildInfo
		ok   bool
		want string
	}{
		{"no build info: the executable's Go build ID", nil, false, goID},
		{"no VCS stamp (-buildvcs=false, a build outside git): the executable's Go build ID", &debug.BuildInfo{}, true, goID},
		{"clean tree", &debug.BuildInfo{Settings: []debug.BuildSetting{{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "d052bc3"}, {Key: "vcs.modified", Value: "false"}}}, true, "d052bc3"},
		{"local changes", &debug.BuildInfo{Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "d052bc3"},
			{Key: "vcs.modified", Value: "true"}}}, true, "d052bc3+dirty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := buildID(tc.info, tc.ok); got != tc.want {
				t.Fatalf("buildID = %q, want %q", got, tc.want)
			}
		})
	}
	if got := goBuildID(os.DevNull); got != "" {
		t.Fatalf("goBuildID of a file that is not ELF = %q, want \"\"", got)
	}
}
