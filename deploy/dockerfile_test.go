package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	line int
	cmd  string // upper case: FROM, RUN, COPY, ...
	args string
}

// stage is one FROM and the instructions after it.
type stage struct {
	from, name string
	instrs     []instruction
}

func (s stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.instrs {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// parseDockerfile splits a Dockerfile into stages, substituting ARG defaults declared before the
// first FROM in FROM lines (as docker does).
func parseDockerfile(t *testing.T, file string) []stage {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var (
		instrs []instruction
		cur    strings.Builder
		start  int
	)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur.Len() > 0 && strings.HasPrefix(trimmed, "#") {
			continue // comment inside a continued instruction
		}
		if cur.Len() == 0 {
			start = n
		}
		if body, ok := strings.CutSuffix(strings.TrimRight(line, " \t"), "\\"); ok {
			cur.WriteString(body + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		instrs = append(instrs, instruction{line: start, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)})
		cur.Reset()
	}
	if cur.Len() > 0 {
		t.Fatalf("%s: ends inside a continued instruction", file)
	}
	globalArgs := map[string]string{}
	var stages []stage
	for _, in := range instrs {
		switch {
		case in.cmd == "ARG" && len(stages) == 0:
			k, v, _ := strings.Cut(in.args, "=")
			globalArgs[k] = v
		case in.cmd == "FROM":
			f := strings.Fields(in.args)
			s := stage{from: os.Expand(f[0], func(k string) string { return globalArgs[k] })}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			stages = append(stages, s)
		case len(stages) == 0:
			t.Fatalf("%s:%d: %s before the first FROM", file, in.line, in.cmd)
		default:
			stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
		}
	}
	if len(stages) < 2 {
		t.Fatalf("%s: want a multi-stage build, found %d stage(s)", file, len(stages))
	}
	return stages
}

// goVersion is the go line of go.mod.
func goVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\S+)\s*$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	return string(m[1])
}

// debianRelease maps Debian code names (golang image tags) to release numbers (distroless tags).
var debianRelease = map[string]string{"bullseye": "11", "bookworm": "12", "trixie": "13"}

var buildTarget = regexp.MustCompile(`go build\s[^&;]*?-o\s+(\S+)\s+(\./\S+)`)

func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t, "Dockerfile")
	build, runtime := stages[0], stages[len(stages)-1]

	// Build targets: output path → package.
	targets := map[string]string{}
	for _, s := range stages {
		for _, in := range s.all("RUN") {
			for _, m := range buildTarget.FindAllStringSubmatch(in.args, -1) {
				targets[m[1]] = m[2]
			}
		}
	}

	tests := []struct {
		name  string
		check func(t *testing.T)
	}{
		{"build stage is golang at go.mod's version on Debian", func(t *testing.T) {
			want := "golang:" + goVersion(t) + "-"
			if !strings.HasPrefix(build.from, want) {
				t.Errorf("build stage FROM %s, want %s<debian release> (go.mod's go line)", build.from, want)
			}
			if _, ok := debianRelease[strings.TrimPrefix(build.from, want)]; !ok {
				t.Errorf("build stage FROM %s: want a Debian (glibc) golang image, e.g. %sbookworm", build.from, want)
			}
		}},
		{"cgo is on", func(t *testing.T) {
			found := false
			for _, in := range build.instrs {
				if (in.cmd == "ENV" || in.cmd == "RUN") && strings.Contains(in.args, "CGO_ENABLED=1") {
					found = true
				}
				if strings.Contains(in.args, "CGO_ENABLED=0") {
					t.Errorf("line %d: CGO_ENABLED=0, but DuckDB needs cgo", in.line)
				}
			}
			if !found {
				t.Error("the build stage does not set CGO_ENABLED=1 (DuckDB is linked with cgo)")
			}
		}},
		{"both programs are built with -trimpath from existing main packages", func(t *testing.T) {
			var pkgs []string
			for _, pkg := range targets {
				pkgs = append(pkgs, pkg)
				if !isMainPackage(t, filepath.Join("..", filepath.FromSlash(pkg))) {
					t.Errorf("go build %s: no main package in that directory", pkg)
				}
			}
			for _, want := range []string{"./worker", "./starter"} {
				if !slices.Contains(pkgs, want) {
					t.Errorf("the Dockerfile does not build %s (builds %v)", want, pkgs)
				}
			}
			for _, s := range stages {
				for _, in := range s.all("RUN") {
					if strings.Contains(in.args, "go build") && strings.Count(in.args, "go build") != strings.Count(in.args, "-trimpath") {
						t.Errorf("line %d: every go build needs -trimpath", in.line)
					}
				}
			}
		}},
		{"runtime is glibc-based on the build's Debian release", func(t *testing.T) {
			from := runtime.from
			for _, bad := range []string{"alpine", "scratch", "distroless/static", "busybox", "musl"} {
				if strings.Contains(from, bad) {
					t.Errorf("runtime FROM %s: DuckDB needs glibc and libstdc++ (%s has neither)", from, bad)
				}
			}
			rel := debianRelease[strings.TrimPrefix(build.from, "golang:"+goVersion(t)+"-")]
			ok := strings.HasPrefix(from, "gcr.io/distroless/cc-debian"+rel) ||
				strings.HasPrefix(from, "debian:") || strings.HasPrefix(from, "ubuntu:")
			if !ok {
				t.Errorf("runtime FROM %s: want gcr.io/distroless/cc-debian%s (glibc and libstdc++ of the build's release)", from, rel)
			}
		}},
		{"runtime runs as a numeric non-root user", func(t *testing.T) {
			users := runtime.all("USER")
			if len(users) == 0 {
				t.Fatal("the runtime stage has no USER")
			}
			user := strings.Fields(users[len(users)-1].args)[0]
			uid, _, _ := strings.Cut(user, ":")
			n, err := strconv.Atoi(uid)
			if err != nil || n == 0 {
				t.Errorf("USER %s: want a numeric non-zero uid (Kubernetes verifies runAsNonRoot only on numeric users)", user)
			}
			dep := baseDeployment(t)
			if sc := dep.Spec.Template.Spec.SecurityContext; sc != nil && sc.RunAsUser != nil && strconv.Itoa(int(*sc.RunAsUser)) != uid {
				t.Errorf("USER %s but the Deployment's runAsUser is %d", user, *sc.RunAsUser)
			}
		}},
		{"binaries are copied to where the manifests run them", func(t *testing.T) {
			copied := map[string]bool{}
			for _, in := range runtime.all("COPY") {
				f := strings.Fields(in.args)
				var paths []string
				from := false
				for _, a := range f {
					if strings.HasPrefix(a, "--from=") {
						from = true
					}
					if !strings.HasPrefix(a, "--") {
						paths = append(paths, a)
					}
				}
				if !from || len(paths) < 2 {
					continue
				}
				dst := paths[len(paths)-1]
				for _, src := range paths[:len(paths)-1] {
					if dst == binDir+"/" || dst == binDir {
						copied[src] = true
					}
				}
			}
			for out := range targets {
				if !copied[out] {
					t.Errorf("built %s is not copied to %s/ in the runtime stage", out, binDir)
				}
			}
			ep := runtime.all("ENTRYPOINT")
			if len(ep) == 0 || !strings.Contains(ep[len(ep)-1].args, binDir+"/worker") {
				t.Errorf("ENTRYPOINT should run %s/worker", binDir)
			}
		}},
		{"the worker's HTTP port is exposed", func(t *testing.T) {
			dep := baseDeployment(t)
			port := ""
			for _, c := range dep.Spec.Template.Spec.Containers {
				if c.Name == "worker" {
					for _, p := range c.Ports {
						if p.Name == "http" {
							port = strconv.Itoa(int(p.ContainerPort))
						}
					}
				}
			}
			exposed := false
			for _, in := range runtime.all("EXPOSE") {
				for _, p := range strings.Fields(in.args) {
					if strings.TrimSuffix(p, "/tcp") == port {
						exposed = true
					}
				}
			}
			if !exposed {
				t.Errorf("the runtime stage does not EXPOSE the worker's HTTP port %s", port)
			}
			for _, in := range runtime.all("ENV") {
				if v, ok := strings.CutPrefix(in.args, "ACTIVATIONS_HTTP_ADDR="); ok && v != ":"+port {
					t.Errorf("ENV ACTIVATIONS_HTTP_ADDR=%s, but the port is %s", v, port)
				}
			}
		}},
		{"the DuckDB state folder belongs to the runtime user", func(t *testing.T) {
			found := false
			for _, in := range runtime.all("COPY") {
				if strings.Contains(in.args, "--chown=65532:65532") && strings.HasSuffix(in.args, " /var/lib/activations") {
					found = true
				}
			}
			if !found {
				t.Error("the runtime stage does not create /var/lib/activations owned by 65532")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.check)
	}
}

func baseDeployment(t *testing.T) *appsv1.Deployment {
	t.Helper()
	for _, o := range decodeFile(t, filepath.Join(k8sDir, "base", "deployment.yaml")) {
		if d, ok := o.obj.(*appsv1.Deployment); ok {
			return d
		}
	}
	t.Fatal("no Deployment in base/deployment.yaml")
	return nil
}

// isMainPackage reports whether dir holds a non-test Go file of package main.
func isMainPackage(t *testing.T, dir string) bool {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if regexp.MustCompile(`(?m)^package main\s*$`).Match(b) {
			return true
		}
	}
	return false
}

// dockerignore is the build context filter of .dockerignore, with Docker's matching rules for
// the patterns used here: a pattern matches a path or any of its parent folders, `*` stays
// within a folder, `**` spans folders, and the last matching pattern wins (`!` re-includes).
type dockerignore struct {
	pats []*regexp.Regexp
	neg  []bool
}

func readDockerignore(t *testing.T) dockerignore {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var di dockerignore
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		neg := strings.HasPrefix(line, "!")
		line = filepath.ToSlash(filepath.Clean(strings.TrimPrefix(line, "!")))
		var re strings.Builder
		re.WriteString("^")
		for i := 0; i < len(line); i++ {
			switch {
			case strings.HasPrefix(line[i:], "**/"):
				re.WriteString("(.*/)?")
				i += 2
			case strings.HasPrefix(line[i:], "**"):
				re.WriteString(".*")
				i++
			case line[i] == '*':
				re.WriteString("[^/]*")
			case line[i] == '?':
				re.WriteString("[^/]")
			default:
				re.WriteString(regexp.QuoteMeta(line[i : i+1]))
			}
		}
		re.WriteString("$")
		di.pats = append(di.pats, regexp.MustCompile(re.String()))
		di.neg = append(di.neg, neg)
	}
	return di
}

func (di dockerignore) excludes(p string) bool {
	excluded := false
	for i, re := range di.pats {
		// The pattern matches the path itself or one of its parent folders.
		for q := p; q != "." && q != "/" && q != ""; q = filepath.ToSlash(filepath.Dir(q)) {
			if re.MatchString(q) {
				excluded = !di.neg[i]
				break
			}
		}
	}
	return excluded
}

func TestDockerignore(t *testing.T) {
	di := readDockerignore(t)
	for _, p := range []string{".git/config", "bin/temporal", "examples/data/users.csv", "examples/.state/activations.duckdb"} {
		if !di.excludes(p) {
			t.Errorf(".dockerignore sends %s to the build context", p)
		}
	}
	// Everything `go build ./worker ./starter` reads must stay: go.mod, go.sum and the non-test Go
	// files of every package outside deploy/ (which neither program imports).
	need := []string{"go.mod", "go.sum"}
	root := ".."
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed while walking (others work in the tree)
		}
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == ".git" || rel == "bin" || rel == "deploy" || strings.HasPrefix(d.Name(), ".") && rel != "." {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(rel, ".go") && !strings.HasSuffix(rel, "_test.go") {
			need = append(need, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range need {
		if di.excludes(p) {
			t.Errorf(".dockerignore leaves %s out of the build context, but the build needs it", p)
		}
	}
	if di.excludes("worker/main.go") || di.excludes("starter/main.go") {
		t.Error(".dockerignore leaves out the programs")
	}
}
