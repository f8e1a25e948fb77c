package deploy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
)

const (
	k8sDir = "k8s"
	// binDir is where deploy/Dockerfile puts the worker and the starter.
	binDir = "/usr/local/bin"
	// minGracePeriod leaves in-flight SyncChunk activities time to finish their Iterable windows.
	minGracePeriod = 60
	// gkeSAAnnotation maps a Kubernetes service account to a Google one (GKE Workload Identity).
	gkeSAAnnotation = "iam.gke.io/gcp-service-account"
	// kubeletDataDir is a name like the hidden folder kubelet writes a mounted ConfigMap's keys to.
	kubeletDataDir = "..2026_01_01_00_00_00.000000001"
)

// externalSecrets are the Secrets the manifests use but do not define (their values are not kept
// in git), with the keys each must hold. docs/deploy.md documents every one of them.
var externalSecrets = map[string][]string{
	"activations-temporal": {"api-key"},
	"activations-iterable": {"api-key"},
	"activations-codec":    {"keys"},
}

// kinds are the objects the manifests may hold, decoded into the API types the server uses.
var kinds = map[string]func() any{
	"apps/v1/Deployment":                     func() any { return &appsv1.Deployment{} },
	"batch/v1/Job":                           func() any { return &batchv1.Job{} },
	"policy/v1/PodDisruptionBudget":          func() any { return &policyv1.PodDisruptionBudget{} },
	"autoscaling/v2/HorizontalPodAutoscaler": func() any { return &autoscalingv2.HorizontalPodAutoscaler{} },
	"v1/ServiceAccount":                      func() any { return &corev1.ServiceAccount{} },
	"v1/ConfigMap":                           func() any { return &corev1.ConfigMap{} },
	"v1/Service":                             func() any { return &corev1.Service{} },
	"v1/Secret":                              func() any { return &corev1.Secret{} },
	"kustomize.config.k8s.io/v1beta1/Kustomization": func() any { return &kustomization{} },
}

// kustomization is the part of kustomize's Kustomization these manifests use. It is decoded
// strictly too: a misspelt or unsupported field fails the test instead of being ignored.
type kustomization struct {
	APIVersion         string                `json:"apiVersion"`
	Kind               string                `json:"kind"`
	Namespace          string                `json:"namespace,omitempty"`
	NamePrefix         string                `json:"namePrefix,omitempty"`
	NameSuffix         string                `json:"nameSuffix,omitempty"`
	Resources          []string              `json:"resources,omitempty"`
	Components         []string              `json:"components,omitempty"`
	Patches            []kustomizePatch      `json:"patches,omitempty"`
	ConfigMapGenerator []kustomizeGenerator  `json:"configMapGenerator,omitempty"`
	SecretGenerator    []kustomizeGenerator  `json:"secretGenerator,omitempty"`
	GeneratorOptions   *kustomizeGenOptions  `json:"generatorOptions,omitempty"`
	Images             []kustomizeImage      `json:"images,omitempty"`
	Labels             []kustomizeLabels     `json:"labels,omitempty"`
	CommonAnnotations  map[string]string     `json:"commonAnnotations,omitempty"`
	Replicas           []kustomizeReplicaSet `json:"replicas,omitempty"`
}

type kustomizePatch struct {
	Path    string             `json:"path,omitempty"`
	Patch   string             `json:"patch,omitempty"`
	Target  *kustomizeSelector `json:"target,omitempty"`
	Options map[string]bool    `json:"options,omitempty"`
}

type kustomizeSelector struct {
	Group              string `json:"group,omitempty"`
	Version            string `json:"version,omitempty"`
	Kind               string `json:"kind,omitempty"`
	Name               string `json:"name,omitempty"`
	Namespace          string `json:"namespace,omitempty"`
	LabelSelector      string `json:"labelSelector,omitempty"`
	AnnotationSelector string `json:"annotationSelector,omitempty"`
}

type kustomizeGenerator struct {
	Name      string               `json:"name"`
	Namespace string               `json:"namespace,omitempty"`
	Behavior  string               `json:"behavior,omitempty"`
	Files     []string             `json:"files,omitempty"`
	Literals  []string             `json:"literals,omitempty"`
	Envs      []string             `json:"envs,omitempty"`
	Type      string               `json:"type,omitempty"`
	Options   *kustomizeGenOptions `json:"options,omitempty"`
}

type kustomizeGenOptions struct {
	Labels                map[string]string `json:"labels,omitempty"`
	Annotations           map[string]string `json:"annotations,omitempty"`
	DisableNameSuffixHash bool              `json:"disableNameSuffixHash,omitempty"`
	Immutable             bool              `json:"immutable,omitempty"`
}

type kustomizeImage struct {
	Name    string `json:"name"`
	NewName string `json:"newName,omitempty"`
	NewTag  string `json:"newTag,omitempty"`
	Digest  string `json:"digest,omitempty"`
}

type kustomizeLabels struct {
	Pairs            map[string]string `json:"pairs"`
	IncludeSelectors bool              `json:"includeSelectors,omitempty"`
	IncludeTemplates bool              `json:"includeTemplates,omitempty"`
}

type kustomizeReplicaSet struct {
	Name  string `json:"name"`
	Count int64  `json:"count"`
}

// object is one decoded YAML document.
type object struct {
	source string // file (and document number) it came from
	kind   string // "apiVersion/kind"
	obj    any    // pointer to the typed struct
}

func (o object) name() string {
	if m, ok := o.obj.(metav1.Object); ok {
		return m.GetName()
	}
	return ""
}

// decodeStrict decodes one YAML document the way the API server decodes a request: duplicate
// keys, unknown fields and fields in the wrong case are errors.
func decodeStrict(doc []byte, into any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(j, into)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// decodeDocuments splits a (multi-document) YAML stream and decodes every document strictly into
// the API type its apiVersion and kind name. Unknown kinds are errors.
func decodeDocuments(source string, data []byte) ([]object, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var (
		out  []object
		errs []error
	)
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", source, err)
		}
		where := fmt.Sprintf("%s#%d", source, i)
		var tm struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		if tm.APIVersion == "" && tm.Kind == "" {
			if j, err := yaml.YAMLToJSON(doc); err == nil && string(bytes.TrimSpace(j)) == "null" {
				continue // an empty document (comments only)
			}
		}
		key := tm.APIVersion + "/" + tm.Kind
		newObj, ok := kinds[key]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: unknown kind %q (apiVersion %q): add it to the test's kinds if it is meant to be here", where, tm.Kind, tm.APIVersion))
			continue
		}
		obj := newObj()
		if err := decodeStrict(doc, obj); err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", where, tm.Kind, err))
			continue
		}
		out = append(out, object{source: where, kind: key, obj: obj})
	}
	return out, errors.Join(errs...)
}

func decodeFile(t *testing.T, file string) []object {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeDocuments(file, data)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func TestStrictDecodingRejectsMistakes(t *testing.T) {
	const head = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n"
	tests := []struct {
		name string
		doc  string
		ok   bool
	}{
		{"valid", head + "automountServiceAccountToken: false\n", true},
		{"empty documents are skipped", "# only a comment\n---\n" + head, true},
		{"unknown field", head + "automountToken: false\n", false},
		{"field in the wrong case", head + "AutomountServiceAccountToken: false\n", false},
		{"duplicate key", head + "automountServiceAccountToken: false\nautomountServiceAccountToken: true\n", false},
		{"wrong type", head + "automountServiceAccountToken: maybe\n", false},
		{"unknown kind", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n", false},
		{"kind under another apiVersion", "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: a\n", false},
		{"unknown field in a nested struct", "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: a\nspec:\n  template:\n    spec:\n      containers:\n        - name: c\n          livenesProbe: {}\n", false},
		{"unknown kustomization field", "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresource: [a.yaml]\n", false},
		{"second document wrong", head + "---\n" + head + "bogus: 1\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeDocuments(tt.name, []byte(tt.doc))
			if tt.ok && err != nil {
				t.Fatalf("want no error, got %v", err)
			}
			if !tt.ok && err == nil {
				t.Fatal("want an error, got none")
			}
		})
	}
}

// tree is a kustomization directory, read statically (without kustomize).
type tree struct {
	dir        string
	k          kustomization
	resources  []object                      // objects of this directory's resource files
	bases      []*tree                       // resource directories
	patches    []object                      // decoded patch files
	generators map[string]kustomizeGenerator // configMapGenerator by name
	files      map[string]string             // every file this kustomization uses → its role
	configMaps map[string]*corev1.ConfigMap  // generated ConfigMaps (name without hash)
	dataFiles  map[string]map[string][]byte  // generator name → key → content
	allObjects func() []object               // resources of this tree and its bases
}

// readTree reads dir/kustomization.yaml strictly and everything it references, failing on any
// listed file that does not exist.
func readTree(t *testing.T, dir string) *tree {
	t.Helper()
	kfile := filepath.Join(dir, "kustomization.yaml")
	data, err := os.ReadFile(kfile)
	if err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	tr := &tree{dir: dir, generators: map[string]kustomizeGenerator{}, files: map[string]string{kfile: "kustomization"},
		configMaps: map[string]*corev1.ConfigMap{}, dataFiles: map[string]map[string][]byte{}}
	if err := decodeStrict(data, &tr.k); err != nil {
		t.Fatalf("%s: %v", kfile, err)
	}
	if tr.k.APIVersion != "kustomize.config.k8s.io/v1beta1" || tr.k.Kind != "Kustomization" {
		t.Errorf("%s: apiVersion/kind = %s/%s, want kustomize.config.k8s.io/v1beta1/Kustomization", kfile, tr.k.APIVersion, tr.k.Kind)
	}
	exists := func(role, rel string) (string, fs.FileInfo, bool) {
		if strings.Contains(rel, "://") {
			t.Errorf("%s: %s %q is remote: keep the manifests self-contained", kfile, role, rel)
			return "", nil, false
		}
		p := filepath.Join(dir, rel)
		st, err := os.Stat(p)
		if err != nil {
			t.Errorf("%s: %s %q does not exist", kfile, role, rel)
			return p, nil, false
		}
		return p, st, true
	}
	for _, r := range tr.k.Resources {
		p, st, ok := exists("resource", r)
		switch {
		case !ok:
		case st.IsDir():
			if _, err := os.Stat(filepath.Join(p, "kustomization.yaml")); err != nil {
				t.Errorf("%s: resource directory %q has no kustomization.yaml", kfile, r)
				continue
			}
			tr.bases = append(tr.bases, readTree(t, p))
		default:
			tr.files[p] = "resource"
			tr.resources = append(tr.resources, decodeFile(t, p)...)
		}
	}
	if len(tr.k.Components) > 0 {
		t.Errorf("%s: components are not checked by this test yet; extend it", kfile)
	}
	for _, p := range tr.k.Patches {
		if p.Path == "" {
			continue
		}
		if f, _, ok := exists("patch", p.Path); ok {
			tr.files[f] = "patch"
			tr.patches = append(tr.patches, decodeFile(t, f)...)
		}
	}
	for _, g := range tr.k.ConfigMapGenerator {
		tr.generators[g.Name] = g
		cm := &corev1.ConfigMap{Data: map[string]string{}}
		cm.Name = g.Name
		tr.dataFiles[g.Name] = map[string][]byte{}
		for _, lit := range g.Literals {
			k, v, ok := strings.Cut(lit, "=")
			if !ok {
				t.Errorf("%s: configMapGenerator %s: literal %q is not KEY=VALUE", kfile, g.Name, lit)
			}
			cm.Data[k] = v
		}
		for _, f := range g.Files {
			key, rel, ok := strings.Cut(f, "=")
			if !ok {
				key, rel = filepath.Base(f), f
			}
			if p, _, ok := exists("configMapGenerator file", rel); ok {
				tr.files[p] = "data"
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				cm.Data[key] = string(b)
				tr.dataFiles[g.Name][key] = b
			}
		}
		tr.configMaps[g.Name] = cm
	}
	for _, g := range tr.k.SecretGenerator {
		t.Errorf("%s: secretGenerator %s: keep Secrets out of git (create them in the cluster, docs/deploy.md)", kfile, g.Name)
	}
	tr.allObjects = func() []object {
		var all []object
		for _, b := range tr.bases {
			all = append(all, b.allObjects()...)
		}
		return append(all, tr.resources...)
	}
	return tr
}

// generator finds a configMapGenerator by name in this tree or its bases.
func (tr *tree) generator(name string) (kustomizeGenerator, bool) {
	if g, ok := tr.generators[name]; ok {
		return g, true
	}
	for _, b := range tr.bases {
		if g, ok := b.generator(name); ok {
			return g, true
		}
	}
	return kustomizeGenerator{}, false
}

// kustomizationDirs lists every directory under deploy/k8s that holds a kustomization.yaml.
func kustomizationDirs(t *testing.T) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(k8sDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && d.Name() == "kustomization.yaml" {
			dirs = append(dirs, filepath.Dir(p))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) == 0 {
		t.Fatalf("no kustomization.yaml under deploy/%s", k8sDir)
	}
	return dirs
}

// TestKustomizations reads every kustomization strictly, checks that every file it lists exists
// and decodes strictly, that patches and generator merges name objects their bases define, and
// that no YAML file under deploy/k8s is left out of every kustomization.
func TestKustomizations(t *testing.T) {
	used := map[string]string{}
	for _, dir := range kustomizationDirs(t) {
		t.Run(dir, func(t *testing.T) {
			tr := readTree(t, dir)
			for f, role := range tr.files {
				used[f] = role
			}
			defined := map[string]bool{}
			for _, o := range tr.allObjects() {
				defined[o.kind+"/"+o.name()] = true
			}
			for _, p := range tr.patches {
				if !defined[p.kind+"/"+p.name()] {
					t.Errorf("%s: patches %s %q, which no resource of %s defines", p.source, p.kind, p.name(), dir)
				}
			}
			for _, g := range tr.k.ConfigMapGenerator {
				switch g.Behavior {
				case "", "create":
				case "merge", "replace":
					found := false
					for _, b := range tr.bases {
						if _, ok := b.generator(g.Name); ok {
							found = true
						}
					}
					if !found {
						t.Errorf("%s: configMapGenerator %s has behavior %s but no base generates it", dir, g.Name, g.Behavior)
					}
				default:
					t.Errorf("%s: configMapGenerator %s: unknown behavior %q", dir, g.Name, g.Behavior)
				}
			}
			// Activation specs shipped in a ConfigMap must load without a single problem.
			for name, files := range tr.dataFiles {
				if name != "activation-specs" {
					continue
				}
				for key, b := range files {
					acts := loadMountedSpecs(t, map[string]string{key: string(b)}, "/specs", "/specs/"+key)
					if len(acts) == 0 {
						t.Errorf("%s: %s/%s holds no activation", dir, name, key)
					}
				}
			}
		})
	}
	if t.Failed() {
		return // a kustomization that did not decode lists no files: the orphan check would mislead
	}
	err := filepath.WalkDir(k8sDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || (!strings.HasSuffix(p, ".yaml") && !strings.HasSuffix(p, ".yml")) {
			return nil
		}
		if _, ok := used[p]; !ok {
			t.Errorf("%s is not used by any kustomization (list it in resources, patches or a generator, or delete it)", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// loadMountedSpecs lays the ConfigMap data out the way kubelet mounts a ConfigMap (the keys in a
// hidden ..<timestamp> folder, ..data linking to it, and one link per key) and loads the specs
// from the path the Job passes to `starter apply -f`, as the starter in the Job would.
func loadMountedSpecs(t *testing.T, data map[string]string, mountPath, arg string) []spec.Activation {
	t.Helper()
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, kubeletDataDir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(kubeletDataDir, filepath.Join(root, "..data")); err != nil {
		t.Fatal(err)
	}
	for k, v := range data {
		if err := os.WriteFile(filepath.Join(root, kubeletDataDir, k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join("..data", k), filepath.Join(root, k)); err != nil {
			t.Fatal(err)
		}
	}
	rel, err := filepath.Rel(mountPath, arg)
	if err != nil || strings.HasPrefix(rel, "..") {
		t.Fatalf("starter apply -f %s: not inside the specs mount %s", arg, mountPath)
	}
	acts, err := spec.Load(filepath.Join(root, rel))
	if err != nil {
		t.Fatalf("starter apply -f %s would fail on this ConfigMap: %v", arg, err)
	}
	// The loader made relative paths absolute against the folder of the file; in the Job that
	// folder is the mount path, and the schedules carry those paths to the workers.
	inJob := func(p string) string {
		if r, ok := strings.CutPrefix(p, root+string(filepath.Separator)); ok {
			return path.Join(mountPath, filepath.ToSlash(r))
		}
		return p
	}
	for i := range acts {
		a := &acts[i]
		a.BaseDir = inJob(a.BaseDir + string(filepath.Separator))
		if a.State.DuckDB != nil {
			a.State.DuckDB.Path = inJob(a.State.DuckDB.Path)
		}
		if a.Source.DuckDB != nil {
			a.Source.DuckDB.Path = inJob(a.Source.DuckDB.Path)
		}
		a.Destination.Iterable.APIKey.File = inJob(a.Destination.Iterable.APIKey.File)
	}
	return acts
}

// bundle is a set of objects to check together: a statically read base, or kustomize's output.
type bundle struct {
	name string
	objs []object
}

func each[T any](b bundle) []T {
	var out []T
	for _, o := range b.objs {
		if v, ok := o.obj.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

func one[T any](t *testing.T, b bundle, what string) T {
	t.Helper()
	all := each[T](b)
	if len(all) != 1 {
		t.Fatalf("%s: want exactly one %s, found %d", b.name, what, len(all))
	}
	return all[0]
}

// staticBundle is the base's objects as written, plus the ConfigMaps its generators would make.
func staticBundle(t *testing.T, dir string) bundle {
	tr := readTree(t, dir)
	if len(tr.bases) > 0 {
		t.Fatalf("%s: staticBundle reads a base only; overlays are checked after rendering", dir)
	}
	b := bundle{name: dir + " (as written)", objs: tr.allObjects()}
	for _, cm := range tr.configMaps {
		b.objs = append(b.objs, object{source: dir + "/kustomization.yaml", kind: "v1/ConfigMap", obj: cm})
	}
	return b
}

// renderedBundle is `kubectl kustomize dir`, decoded strictly.
func renderedBundle(t *testing.T, kubectl, dir string) bundle {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kubectl, "kustomize", dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr.String())
	}
	objs, err := decodeDocuments("kubectl kustomize "+dir, out)
	if err != nil {
		t.Fatal(err)
	}
	return bundle{name: dir + " (rendered)", objs: objs}
}

func TestBaseAsWritten(t *testing.T) {
	checkBundle(t, staticBundle(t, filepath.Join(k8sDir, "base")))
}

// TestRenderedKustomizations renders every kustomization with `kubectl kustomize` (when kubectl
// is installed) and checks the result, which is what `kubectl apply -k` would send.
func TestRenderedKustomizations(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl is not on PATH: the rendered base and overlays are not checked (the base is still checked as written)")
	}
	for _, dir := range kustomizationDirs(t) {
		t.Run(dir, func(t *testing.T) {
			checkBundle(t, renderedBundle(t, kubectl, dir))
		})
	}
}

// checkBundle checks the invariants that make the deployment work.
func checkBundle(t *testing.T, b bundle) {
	t.Helper()
	dep := one[*appsv1.Deployment](t, b, "Deployment")
	job := one[*batchv1.Job](t, b, "Job")
	hpa := one[*autoscalingv2.HorizontalPodAutoscaler](t, b, "HorizontalPodAutoscaler")
	pdb := one[*policyv1.PodDisruptionBudget](t, b, "PodDisruptionBudget")
	svc := one[*corev1.Service](t, b, "Service")
	pod := &dep.Spec.Template
	worker := container(t, pod.Spec.Containers, "worker")
	httpPort := namedPort(t, worker, "http")
	pods := []struct {
		name string
		spec corev1.PodSpec
	}{{"Deployment " + dep.Name, pod.Spec}, {"Job " + job.Name, job.Spec.Template.Spec}}

	t.Run("every object is named", func(t *testing.T) {
		for _, o := range b.objs {
			if o.name() == "" {
				t.Errorf("%s: %s without metadata.name", o.source, o.kind)
			}
		}
	})

	t.Run("deployment selects its pods", func(t *testing.T) {
		if !selects(t, dep.Spec.Selector, pod.Labels) {
			t.Errorf("Deployment %s: selector %v does not match its pod labels %v", dep.Name, dep.Spec.Selector, pod.Labels)
		}
	})

	t.Run("probes and metrics on the worker's HTTP port", func(t *testing.T) {
		addr := envValue(worker, "ACTIVATIONS_HTTP_ADDR")
		if addr == "" {
			t.Fatal("worker: ACTIVATIONS_HTTP_ADDR is not set")
		}
		_, port, err := net.SplitHostPort(addr)
		if err != nil || port != strconv.Itoa(int(httpPort)) {
			t.Errorf("worker: ACTIVATIONS_HTTP_ADDR %q does not listen on the container port %d", addr, httpPort)
		}
		probes := []struct {
			name string
			p    *corev1.Probe
			path string
			must bool
		}{
			{"livenessProbe", worker.LivenessProbe, "/healthz", true},
			{"readinessProbe", worker.ReadinessProbe, "/readyz", true},
			{"startupProbe", worker.StartupProbe, "/healthz", false},
		}
		for _, pr := range probes {
			if pr.p == nil {
				if pr.must {
					t.Errorf("worker: no %s", pr.name)
				}
				continue
			}
			if pr.p.HTTPGet == nil {
				t.Errorf("worker: %s is not an HTTP GET", pr.name)
				continue
			}
			if pr.p.HTTPGet.Path != pr.path {
				t.Errorf("worker: %s path %q, want %q", pr.name, pr.p.HTTPGet.Path, pr.path)
			}
			if got := resolvePort(t, worker, pr.p.HTTPGet.Port); got != httpPort {
				t.Errorf("worker: %s on port %d, want the HTTP port %d", pr.name, got, httpPort)
			}
		}
		ann := pod.Annotations
		if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/path"] != "/metrics" ||
			ann["prometheus.io/port"] != strconv.Itoa(int(httpPort)) {
			t.Errorf("worker pod: prometheus annotations %v, want scrape true, path /metrics, port %d", ann, httpPort)
		}
	})

	t.Run("pods run as non-root with a read-only root", func(t *testing.T) {
		for _, p := range pods {
			psc := p.spec.SecurityContext
			for i := range p.spec.Containers {
				c := &p.spec.Containers[i]
				csc := c.SecurityContext
				if csc == nil {
					csc = &corev1.SecurityContext{}
				}
				nonRoot := ptrTrue(csc.RunAsNonRoot) || (csc.RunAsNonRoot == nil && psc != nil && ptrTrue(psc.RunAsNonRoot))
				if !nonRoot {
					t.Errorf("%s/%s: runAsNonRoot is not true", p.name, c.Name)
				}
				uid := csc.RunAsUser
				if uid == nil && psc != nil {
					uid = psc.RunAsUser
				}
				if uid != nil && *uid == 0 {
					t.Errorf("%s/%s: runAsUser 0", p.name, c.Name)
				}
				if !ptrTrue(csc.ReadOnlyRootFilesystem) {
					t.Errorf("%s/%s: readOnlyRootFilesystem is not true", p.name, c.Name)
				}
				if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
					t.Errorf("%s/%s: allowPrivilegeEscalation is not false", p.name, c.Name)
				}
				if csc.Capabilities == nil || !slices.Contains(csc.Capabilities.Drop, "ALL") {
					t.Errorf("%s/%s: capabilities do not drop ALL", p.name, c.Name)
				}
				// With a read-only root, whatever writes to $HOME or $TMPDIR needs a volume there.
				for _, v := range []string{"HOME", "TMPDIR"} {
					dir := envValue(c, v)
					if dir == "" {
						t.Errorf("%s/%s: %s is not set to a writable volume", p.name, c.Name, v)
					} else if m := mountOf(c, dir); m == nil || m.ReadOnly || !isEmptyDir(p.spec, m.Name) {
						t.Errorf("%s/%s: %s=%s is not on a writable emptyDir", p.name, c.Name, v, dir)
					}
				}
			}
		}
	})

	t.Run("resources", func(t *testing.T) {
		for _, p := range pods {
			for _, c := range p.spec.Containers {
				for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
					req, okReq := c.Resources.Requests[r]
					lim, okLim := c.Resources.Limits[r]
					if !okReq || !okLim {
						t.Errorf("%s/%s: %s request and limit must both be set", p.name, c.Name, r)
						continue
					}
					if req.Cmp(lim) > 0 {
						t.Errorf("%s/%s: %s request %s above its limit %s", p.name, c.Name, r, req.String(), lim.String())
					}
				}
				// emptyDirs count against the container's ephemeral storage: they must fit.
				if lim, ok := c.Resources.Limits[corev1.ResourceEphemeralStorage]; ok && len(p.spec.Containers) == 1 {
					total := resource.Quantity{}
					for _, v := range p.spec.Volumes {
						if v.EmptyDir != nil && v.EmptyDir.SizeLimit != nil {
							total.Add(*v.EmptyDir.SizeLimit)
						}
					}
					if total.Cmp(lim) > 0 {
						t.Errorf("%s/%s: emptyDir size limits add up to %s, above the ephemeral-storage limit %s", p.name, c.Name, total.String(), lim.String())
					}
				}
			}
		}
	})

	t.Run("DuckDB fits in the worker's limits", func(t *testing.T) {
		env := effectiveEnv(b, worker)
		if v, ok := env["ACTIVATIONS_DUCKDB_MEMORY_LIMIT"]; ok {
			lim, okLim := worker.Resources.Limits[corev1.ResourceMemory]
			n, okN := warehouse.ParseMemorySize(v)
			// DuckDB's buffer pool plus the Go heap and Arrow buffers must fit in the container.
			if okLim && okN && float64(n) > 0.75*float64(lim.Value()) {
				t.Errorf("ACTIVATIONS_DUCKDB_MEMORY_LIMIT=%s is above 75%% of the worker's memory limit %s", v, lim.String())
			}
		}
		if v, ok := env["ACTIVATIONS_DUCKDB_THREADS"]; ok {
			n, err := strconv.Atoi(v)
			lim, okLim := worker.Resources.Limits[corev1.ResourceCPU]
			if err != nil || n < 1 {
				t.Errorf("ACTIVATIONS_DUCKDB_THREADS=%q is not a positive number", v)
			} else if okLim && int64(n) > lim.Value() {
				t.Errorf("ACTIVATIONS_DUCKDB_THREADS=%d is above the worker's CPU limit %s (threads beyond it are throttled)", n, lim.String())
			}
		}
	})

	t.Run("volumes", func(t *testing.T) {
		for _, p := range pods {
			vols := map[string]bool{}
			for _, v := range p.spec.Volumes {
				vols[v.Name] = true
			}
			mounted := map[string]bool{}
			for _, c := range p.spec.Containers {
				for _, m := range c.VolumeMounts {
					mounted[m.Name] = true
					if !vols[m.Name] {
						t.Errorf("%s/%s: volumeMount %s names no volume", p.name, c.Name, m.Name)
					}
				}
			}
			for v := range vols {
				if !mounted[v] {
					t.Errorf("%s: volume %s is not mounted", p.name, v)
				}
			}
		}
	})

	t.Run("graceful shutdown", func(t *testing.T) {
		if g := pod.Spec.TerminationGracePeriodSeconds; g == nil || *g < minGracePeriod {
			t.Errorf("Deployment %s: terminationGracePeriodSeconds must be at least %ds for in-flight chunks", dep.Name, minGracePeriod)
		}
	})

	t.Run("service account for Workload Identity", func(t *testing.T) {
		name := pod.Spec.ServiceAccountName
		var found *corev1.ServiceAccount
		for _, sa := range each[*corev1.ServiceAccount](b) {
			if sa.Name == name {
				found = sa
			}
		}
		if found == nil {
			t.Fatalf("Deployment %s: serviceAccountName %q is not defined", dep.Name, name)
		}
		if gsa := found.Annotations[gkeSAAnnotation]; !strings.HasSuffix(gsa, ".iam.gserviceaccount.com") || !strings.Contains(gsa, "@") {
			t.Errorf("ServiceAccount %s: %s = %q, want a Google service account email", name, gkeSAAnnotation, gsa)
		}
	})

	t.Run("HPA scales the deployment on CPU", func(t *testing.T) {
		ref := hpa.Spec.ScaleTargetRef
		if ref.APIVersion != "apps/v1" || ref.Kind != "Deployment" || ref.Name != dep.Name {
			t.Errorf("HPA %s targets %s %s %q, want apps/v1 Deployment %q", hpa.Name, ref.APIVersion, ref.Kind, ref.Name, dep.Name)
		}
		minR := int32(1)
		if hpa.Spec.MinReplicas != nil {
			minR = *hpa.Spec.MinReplicas
		}
		if minR < 1 || hpa.Spec.MaxReplicas < minR {
			t.Errorf("HPA %s: replicas %d..%d", hpa.Name, minR, hpa.Spec.MaxReplicas)
		}
		cpu := false
		for _, m := range hpa.Spec.Metrics {
			if m.Type == autoscalingv2.ResourceMetricSourceType && m.Resource != nil && m.Resource.Name == corev1.ResourceCPU {
				cpu = true
			}
		}
		if !cpu {
			t.Errorf("HPA %s: no CPU resource metric", hpa.Name)
		}
		if _, ok := worker.Resources.Requests[corev1.ResourceCPU]; !ok {
			t.Errorf("HPA %s: CPU utilization needs a CPU request on the worker", hpa.Name)
		}
		if r := dep.Spec.Replicas; r != nil && (*r < minR || *r > hpa.Spec.MaxReplicas) {
			t.Errorf("Deployment %s: replicas %d outside its HPA's %d..%d", dep.Name, *r, minR, hpa.Spec.MaxReplicas)
		}
	})

	t.Run("PDB and Service select the workers only", func(t *testing.T) {
		jobLabels := job.Spec.Template.Labels
		if !selects(t, pdb.Spec.Selector, pod.Labels) {
			t.Errorf("PDB %s: selector does not match the worker pod labels %v", pdb.Name, pod.Labels)
		}
		if selects(t, pdb.Spec.Selector, jobLabels) {
			t.Errorf("PDB %s: selector also matches the apply Job's pods", pdb.Name)
		}
		if (pdb.Spec.MaxUnavailable == nil) == (pdb.Spec.MinAvailable == nil) {
			t.Errorf("PDB %s: set exactly one of maxUnavailable and minAvailable", pdb.Name)
		}
		if m := pdb.Spec.MinAvailable; m != nil && m.Type == intstr.Int && hpa.Spec.MinReplicas != nil && m.IntVal >= *hpa.Spec.MinReplicas {
			t.Errorf("PDB %s: minAvailable %d with as few as %d workers blocks every node drain", pdb.Name, m.IntVal, *hpa.Spec.MinReplicas)
		}
		sel := &metav1.LabelSelector{MatchLabels: svc.Spec.Selector}
		if len(svc.Spec.Selector) == 0 || !selects(t, sel, pod.Labels) {
			t.Errorf("Service %s: selector %v does not match the worker pods", svc.Name, svc.Spec.Selector)
		}
		if selects(t, sel, jobLabels) {
			t.Errorf("Service %s: selector also matches the apply Job's pods", svc.Name)
		}
		for _, p := range svc.Spec.Ports {
			if got := resolvePort(t, worker, p.TargetPort); got != httpPort {
				t.Errorf("Service %s: port %s targets %d, want the worker's HTTP port %d", svc.Name, p.Name, got, httpPort)
			}
		}
	})

	t.Run("references to ConfigMaps and Secrets", func(t *testing.T) {
		configMaps := map[string]*corev1.ConfigMap{}
		for _, cm := range each[*corev1.ConfigMap](b) {
			configMaps[cm.Name] = cm
		}
		secrets := map[string][]string{}
		for n, keys := range externalSecrets {
			secrets[n] = keys
		}
		for _, s := range each[*corev1.Secret](b) {
			for k := range s.Data {
				secrets[s.Name] = append(secrets[s.Name], k)
			}
			for k := range s.StringData {
				secrets[s.Name] = append(secrets[s.Name], k)
			}
		}
		checkRefs := func(where string, ps corev1.PodSpec) {
			cmKey := func(what, name, key string, optional *bool) {
				cm, ok := configMaps[name]
				switch {
				case !ok:
					t.Errorf("%s: %s names ConfigMap %q, which is not defined", where, what, name)
				case key != "" && !ptrTrue(optional):
					if _, ok := cm.Data[key]; !ok {
						t.Errorf("%s: %s names key %q of ConfigMap %s, which it does not hold", where, what, key, name)
					}
				}
			}
			secretKey := func(what, name, key string) {
				keys, ok := secrets[name]
				switch {
				case !ok:
					t.Errorf("%s: %s names Secret %q, which is neither defined nor listed as external (externalSecrets, docs/deploy.md)", where, what, name)
				case key != "" && !slices.Contains(keys, key):
					t.Errorf("%s: %s names key %q of Secret %s; known keys: %v", where, what, key, name, keys)
				}
			}
			for _, c := range ps.Containers {
				w := where + "/" + c.Name
				for _, e := range c.EnvFrom {
					if e.ConfigMapRef != nil {
						cmKey(w+" envFrom", e.ConfigMapRef.Name, "", nil)
					}
					if e.SecretRef != nil {
						secretKey(w+" envFrom", e.SecretRef.Name, "")
					}
				}
				for _, e := range c.Env {
					if e.ValueFrom == nil {
						continue
					}
					if r := e.ValueFrom.ConfigMapKeyRef; r != nil {
						cmKey(w+" env "+e.Name, r.Name, r.Key, r.Optional)
					}
					if r := e.ValueFrom.SecretKeyRef; r != nil {
						secretKey(w+" env "+e.Name, r.Name, r.Key)
					}
				}
			}
			for _, v := range ps.Volumes {
				if v.ConfigMap != nil {
					cmKey(where+" volume "+v.Name, v.ConfigMap.Name, "", nil)
					for _, it := range v.ConfigMap.Items {
						cmKey(where+" volume "+v.Name, v.ConfigMap.Name, it.Key, v.ConfigMap.Optional)
					}
				}
				if v.Secret != nil {
					secretKey(where+" volume "+v.Name, v.Secret.SecretName, "")
					for _, it := range v.Secret.Items {
						secretKey(where+" volume "+v.Name, v.Secret.SecretName, it.Key)
					}
				}
			}
		}
		checkRefs("Deployment "+dep.Name, pod.Spec)
		checkRefs("Job "+job.Name, job.Spec.Template.Spec)
	})

	t.Run("payload codec keys from a mounted Secret", func(t *testing.T) {
		for _, p := range []struct {
			name string
			spec corev1.PodSpec
			c    *corev1.Container
		}{{"Deployment " + dep.Name, pod.Spec, worker}, {"Job " + job.Name, job.Spec.Template.Spec, &job.Spec.Template.Spec.Containers[0]}} {
			file := envValue(p.c, "ACTIVATIONS_CODEC_KEYS_FILE")
			if file == "" {
				t.Errorf("%s/%s: ACTIVATIONS_CODEC_KEYS_FILE is not set", p.name, p.c.Name)
				continue
			}
			m := mountOf(p.c, file)
			vol := volume(p.spec, m)
			if vol == nil || vol.Secret == nil || !m.ReadOnly {
				t.Errorf("%s/%s: ACTIVATIONS_CODEC_KEYS_FILE=%s is not in a read-only Secret volume", p.name, p.c.Name, file)
				continue
			}
			key := strings.TrimPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/")
			if keys, ok := externalSecrets[vol.Secret.SecretName]; ok && !slices.Contains(keys, key) {
				t.Errorf("%s/%s: ACTIVATIONS_CODEC_KEYS_FILE=%s is key %q of Secret %s; its keys are %v", p.name, p.c.Name, file, key, vol.Secret.SecretName, keys)
			}
		}
	})

	t.Run("worker and Job share the image and the Temporal settings", func(t *testing.T) {
		jc := job.Spec.Template.Spec.Containers
		if len(jc) != 1 {
			t.Fatalf("Job %s: want one container, found %d", job.Name, len(jc))
		}
		if jc[0].Image != worker.Image || worker.Image == "" {
			t.Errorf("Job image %q, worker image %q: the starter must come from the worker's build", jc[0].Image, worker.Image)
		}
		// The Job creates schedules on the task queue the worker polls, in the same namespace.
		if !reflect.DeepEqual(jc[0].EnvFrom, worker.EnvFrom) {
			t.Errorf("Job envFrom %v differs from the worker's %v", jc[0].EnvFrom, worker.EnvFrom)
		}
		for _, name := range []string{"TEMPORAL_API_KEY", "ACTIVATIONS_TASK_QUEUE", "TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "ACTIVATIONS_CODEC_KEYS_FILE"} {
			if !reflect.DeepEqual(envVar(&jc[0], name), envVar(worker, name)) {
				t.Errorf("env %s differs between the Job and the worker", name)
			}
		}
		for _, c := range []*corev1.Container{worker, &jc[0]} {
			if len(c.Command) == 0 || path.Dir(c.Command[0]) != binDir {
				t.Errorf("container %s: command %v, want a binary in %s (deploy/Dockerfile)", c.Name, c.Command, binDir)
			}
		}
		if len(worker.Command) > 0 && worker.Command[0] != binDir+"/worker" {
			t.Errorf("worker: command %v, want %s/worker", worker.Command, binDir)
		}
	})

	t.Run("Job applies the specs and the worker can run them", func(t *testing.T) {
		ps := job.Spec.Template.Spec
		if ps.RestartPolicy != corev1.RestartPolicyNever && ps.RestartPolicy != corev1.RestartPolicyOnFailure {
			t.Errorf("Job %s: restartPolicy %q", job.Name, ps.RestartPolicy)
		}
		if job.Spec.BackoffLimit == nil || job.Spec.ActiveDeadlineSeconds == nil {
			t.Errorf("Job %s: set backoffLimit and activeDeadlineSeconds so a failing apply ends", job.Name)
		}
		c := &ps.Containers[0]
		if len(c.Command) == 0 || c.Command[0] != binDir+"/starter" {
			t.Fatalf("Job %s: command %v, want %s/starter", job.Name, c.Command, binDir)
		}
		args := c.Args
		if len(args) == 0 || args[0] != "apply" || !slices.Contains(args, "--prune") {
			t.Fatalf("Job %s: args %v, want apply ... --prune", job.Name, args)
		}
		i := slices.Index(args, "-f")
		if i < 0 || i+1 >= len(args) {
			t.Fatalf("Job %s: args %v: no -f PATH", job.Name, args)
		}
		arg := args[i+1]
		m := mountOf(c, arg)
		vol := volume(ps, m)
		if vol == nil || vol.ConfigMap == nil {
			t.Fatalf("Job %s: -f %s is not in a mounted ConfigMap", job.Name, arg)
		}
		var cm *corev1.ConfigMap
		for _, x := range each[*corev1.ConfigMap](b) {
			if x.Name == vol.ConfigMap.Name {
				cm = x
			}
		}
		if cm == nil {
			t.Fatalf("Job %s: ConfigMap %s of -f %s is not defined", job.Name, vol.ConfigMap.Name, arg)
		}
		acts := loadMountedSpecs(t, cm.Data, m.MountPath, arg)
		if len(acts) == 0 {
			t.Fatalf("ConfigMap %s: no activation", cm.Name)
		}
		duck := checkSpecsRunOnWorker(t, acts, pod.Spec, worker)
		if len(duck) > 0 {
			// One process owns a DuckDB file, and a run's activities all need the plan table its
			// Plan activity wrote there: exactly one worker, never two at once.
			if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 1 {
				t.Errorf("DuckDB activations %v: Deployment %s must set replicas: 1", duck, dep.Name)
			}
			if dep.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
				t.Errorf("DuckDB activations %v: Deployment %s must use strategy Recreate (a rolling update runs two workers)", duck, dep.Name)
			}
			if hpa.Spec.MaxReplicas != 1 {
				t.Errorf("DuckDB activations %v: HPA %s must keep maxReplicas 1, has %d", duck, hpa.Name, hpa.Spec.MaxReplicas)
			}
		}
	})
}

// checkSpecsRunOnWorker checks that the worker can resolve what the specs reference: API keys
// from its environment or files, DuckDB files on its writable volumes. It returns the ids of the
// activations that keep DuckDB state.
func checkSpecsRunOnWorker(t *testing.T, acts []spec.Activation, ps corev1.PodSpec, worker *corev1.Container) []string {
	t.Helper()
	var duck []string
	for _, a := range acts {
		key := a.Destination.Iterable.APIKey
		switch {
		case key.Env != "":
			e := envVar(worker, key.Env)
			if e == nil || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
				t.Errorf("activation %s: apiKey {env: %s}: the worker does not set %s from a Secret", a.ID, key.Env, key.Env)
			}
		case key.File != "":
			if m := mountOf(worker, key.File); m == nil || volume(ps, m) == nil || volume(ps, m).Secret == nil {
				t.Errorf("activation %s: apiKey {file: %s} is not in a Secret volume of the worker", a.ID, key.File)
			}
		}
		if a.Source.Type != "duckdb" {
			continue
		}
		duck = append(duck, a.ID)
		for what, p := range map[string]string{"state.duckdb.path": a.StatePath(), "source.duckdb.path": a.SourcePath()} {
			if p == "" {
				if what == "state.duckdb.path" {
					t.Errorf("activation %s: %s is empty (in-memory state, lost with every worker restart)", a.ID, what)
				}
				continue
			}
			m := mountOf(worker, p)
			if m == nil || (what == "state.duckdb.path" && m.ReadOnly) {
				t.Errorf("activation %s: %s %s is not on a writable volume of the worker (write absolute paths: relative ones resolve against the Job's /specs)", a.ID, what, p)
			}
		}
	}
	return duck
}

func TestDocsDescribeExternalSecrets(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "deploy.md"))
	if err != nil {
		t.Fatal(err)
	}
	mentions := func(name string) bool {
		return regexp.MustCompile(`(^|[^\w-])` + regexp.QuoteMeta(name) + `([^\w-]|$)`).Match(doc)
	}
	for name, keys := range externalSecrets {
		if !mentions(name) {
			t.Errorf("docs/deploy.md does not mention the external Secret %s", name)
		}
		for _, k := range keys {
			if !bytes.Contains(doc, []byte("`"+k+"`")) && !bytes.Contains(doc, []byte("--from-file="+k+"=")) &&
				!bytes.Contains(doc, []byte("--from-literal="+k+"=")) {
				t.Errorf("docs/deploy.md does not mention key %s of Secret %s", k, name)
			}
		}
	}
	base := staticBundle(t, filepath.Join(k8sDir, "base"))
	dep := one[*appsv1.Deployment](t, base, "Deployment")
	for _, e := range container(t, dep.Spec.Template.Spec.Containers, "worker").Env {
		if !mentions(e.Name) {
			t.Errorf("docs/deploy.md does not mention the worker's environment variable %s", e.Name)
		}
	}
}

// effectiveEnv is the container's environment: its envFrom ConfigMaps, then its literal env.
func effectiveEnv(b bundle, c *corev1.Container) map[string]string {
	env := map[string]string{}
	for _, e := range c.EnvFrom {
		if e.ConfigMapRef == nil {
			continue
		}
		for _, cm := range each[*corev1.ConfigMap](b) {
			if cm.Name == e.ConfigMapRef.Name {
				for k, v := range cm.Data {
					env[e.Prefix+k] = v
				}
			}
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = e.Value
		}
	}
	return env
}

func container(t *testing.T, cs []corev1.Container, name string) *corev1.Container {
	t.Helper()
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	t.Fatalf("no container %q", name)
	return nil
}

func namedPort(t *testing.T, c *corev1.Container, name string) int32 {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Fatalf("container %s: no port named %q", c.Name, name)
	return 0
}

func resolvePort(t *testing.T, c *corev1.Container, p intstr.IntOrString) int32 {
	t.Helper()
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	t.Errorf("container %s: no port named %q", c.Name, p.StrVal)
	return -1
}

func selects(t *testing.T, sel *metav1.LabelSelector, l map[string]string) bool {
	t.Helper()
	if sel == nil {
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Errorf("selector %v: %v", sel, err)
		return false
	}
	return !s.Empty() && s.Matches(labels.Set(l))
}

func envVar(c *corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

func envValue(c *corev1.Container, name string) string {
	if e := envVar(c, name); e != nil {
		return e.Value
	}
	return ""
}

// mountOf is the volume mount that holds the file or folder p (the deepest one).
func mountOf(c *corev1.Container, p string) *corev1.VolumeMount {
	var best *corev1.VolumeMount
	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		mp := strings.TrimSuffix(m.MountPath, "/")
		if (p == mp || strings.HasPrefix(p, mp+"/")) && (best == nil || len(mp) > len(best.MountPath)) {
			best = m
		}
	}
	return best
}

func volume(ps corev1.PodSpec, m *corev1.VolumeMount) *corev1.Volume {
	if m == nil {
		return nil
	}
	for i := range ps.Volumes {
		if ps.Volumes[i].Name == m.Name {
			return &ps.Volumes[i]
		}
	}
	return nil
}

func isEmptyDir(ps corev1.PodSpec, name string) bool {
	for _, v := range ps.Volumes {
		if v.Name == name {
			return v.EmptyDir != nil
		}
	}
	return false
}

func ptrTrue(b *bool) bool { return b != nil && *b }
