package main

import (
	"context"
	cryptorand "crypto/rand"
	"encoding/base64"
	"encoding/csv"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.temporal.io/sdk/worker"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/codec"
	"github.com/activation-engine/activations/internal/devserver"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/schedules"
	"golang.org/x/term"

	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/telemetry"
	"github.com/activation-engine/activations/workflows"
)

const (
	demoActivation = "users-to-iterable"
	// demoListActivation keeps the static list of the demo's VIP users.
	demoListActivation = "vip-users"
	demoAPIKey         = "demo-project-api-key"
)

// cmdDemo runs the main job on the embedded default: the Temporal dev server with its UI, the
// Iterable emulator, a worker, a generated model of users, two runs of the example activation.
func cmdDemo(ctx context.Context, args []string, out io.Writer, logger *slog.Logger) error {
	fs := newFlags("demo")
	keep := fs.Bool("keep-running", false, "keep the dev server, UI, emulator and worker running after the demo")
	rows := fs.Int("rows", 100_000, "users in the generated model")
	dir := fs.String("dir", "examples", "folder holding users-to-iterable.yaml (data/ and .state/ are written there)")
	bin := fs.String("bin", "bin", "folder of the Temporal CLI (built there when missing)")
	port := fs.Int("port", 7233, "Temporal frontend port")
	uiPort := fs.Int("ui-port", 8233, "Temporal Web UI port")
	codecPort := fs.Int("codec-port", 8081, "port of the codec server the Web UI decrypts payloads with (loopback only)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	start := time.Now()
	// The demo's own output is the story; the worker's info logs would drown it (LOG_LEVEL=info shows them).
	logger = telemetry.LoggerDefaultLevel(os.Stderr, slog.LevelWarn)

	fmt.Fprintln(out, "1. Temporal dev server")
	cli, err := devserver.EnsureCLI(ctx, *bin, logger)
	if err != nil {
		return err
	}
	// Payloads are encrypted as in production: with ACTIVATIONS_CODEC_KEYS when set, else a key
	// made for this demo. The UI decrypts them through a codec server on loopback.
	cdc, generated, err := demoCodec()
	if err != nil {
		return err
	}
	codecURL, stopCodec, err := serveDemoCodec(cdc, *codecPort, fmt.Sprintf("http://localhost:%d", *uiPort), logger)
	if err != nil {
		return err
	}
	defer stopCodec()
	dc, fc := codec.Converters(cdc)
	srv, err := devserver.Start(ctx, devserver.Options{
		CLIPath: cli, HostPort: fmt.Sprintf("127.0.0.1:%d", *port), UIPort: strconv.Itoa(*uiPort),
		SearchAttributes: workflows.SearchAttributes(), Logger: logger,
		DataConverter: dc, FailureConverter: fc, UICodecEndpoint: codecURL,
	})
	if err != nil {
		return fmt.Errorf("%w (is another Temporal server using port %d? try --port)", err, *port)
	}
	defer func() { _ = srv.Stop() }()
	fmt.Fprintf(out, "   frontend %s, Web UI %s\n", srv.HostPort, srv.UIURL)
	keyNote := "key " + cdc.ActiveKeyID() + " from " + codec.EnvKeys
	if generated {
		keyNote = "a key generated for this demo"
	}
	fmt.Fprintf(out, "   payloads encrypted with AES-256-GCM (%s); the UI decrypts them through the codec server %s\n", keyNote, codecURL)

	fmt.Fprintln(out, "2. Iterable emulator (5 bulkUpdate requests/s, 4 MB bodies, field-type locking)")
	emu := iterabletest.NewServer(iterabletest.Options{Logger: logger})
	defer emu.Close()
	emu.AddProject(demoAPIKey, iterabletest.ProjectHybrid)
	// The worker resolves the spec's {env: ITERABLE_API_KEY} reference in its own environment.
	if err := os.Setenv("ITERABLE_API_KEY", demoAPIKey); err != nil {
		return err
	}
	fmt.Fprintf(out, "   %s (hybrid project)\n", emu.URL())

	c := srv.Client()
	acts := activities.New(logger)
	acts.Temporal = c
	defer func() { _ = acts.Close() }()
	w := worker.New(c, taskQueue(), worker.Options{})
	workflows.Register(w, acts)
	if err := w.Start(); err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	defer w.Stop()
	fmt.Fprintf(out, "3. worker on task queue %q\n", taskQueue())

	specFile := filepath.Join(*dir, demoActivation+".yaml")
	act, err := spec.LoadOne(specFile, demoActivation)
	if err != nil {
		return err
	}
	act.Destination.Iterable.BaseURL = emu.URL()
	if err := os.RemoveAll(filepath.Dir(act.StatePath())); err != nil {
		return fmt.Errorf("reset demo state: %w", err)
	}
	csvPath := filepath.Join(act.BaseDir, "data", "users.csv")
	users := generateUsers(*rows)
	if err := writeUsers(csvPath, users); err != nil {
		return err
	}
	fmt.Fprintf(out, "4. model: %d users in %s (with 3 malformed emails, 1 duplicate key and 1 NULL key on purpose)\n", len(users), csvPath)

	changes, err := schedules.Apply(ctx, c, []spec.Activation{act}, schedules.ApplyOptions{TaskQueue: taskQueue()})
	if err != nil {
		return err
	}
	for _, ch := range changes {
		fmt.Fprintf(out, "5. schedule %s %s (%s)\n", ch.ScheduleID, ch.Action, act.Schedule.Cron)
	}

	fmt.Fprintln(out, "\n6. first run: every user is new")
	if _, err := startAndWatch(ctx, c, out, workflows.RunInput{Spec: act}, true); err != nil {
		return err
	}
	firstStats := emu.Stats(demoAPIKey)

	vip, err := spec.LoadOne(filepath.Join(*dir, demoListActivation+".yaml"), demoListActivation)
	if err != nil {
		return err
	}
	vip.Destination.Iterable.BaseURL = emu.URL()
	fmt.Fprintln(out, "\n6b. list activation: the static list \"VIP users\" (pro and enterprise plans), created on the first run")
	vipRep, err := startAndWatch(ctx, c, out, workflows.RunInput{Spec: vip}, true)
	if err != nil {
		return err
	}
	if vipRep.List != nil {
		fmt.Fprintf(out, "\n   list %q (id %d) now has %d members\n", vipRep.List.Name, vipRep.List.ID, len(emu.ListMembers(demoAPIKey, vipRep.List.ID)))
	}

	changed := mutate(users, 0.02)
	if err := writeUsers(csvPath, users); err != nil {
		return err
	}
	fmt.Fprintf(out, "\n7. second run after changing one attribute of %d users (2%%): only those users, only that attribute\n", changed)
	rep, err := startAndWatch(ctx, c, out, workflows.RunInput{Spec: act}, true)
	if err != nil {
		return err
	}
	second := emu.Stats(demoAPIKey)
	users2, fields2 := second.UsersReceived-firstStats.UsersReceived, second.FieldsReceived-firstStats.FieldsReceived
	fmt.Fprintf(out, "\n   Iterable received in the second run: %d requests, %d users, %d field values (%.2f per user); %d rows rejected last run before sending are still rejected (unchanged, not sent again), %d rejected again (%d known)\n",
		second.BulkRequests-firstStats.BulkRequests, users2, fields2, float64(fields2)/float64(max(1, users2)),
		rep.StillRejected.Total(), rep.Rejected.Total(), rep.KnownRejected.Total())

	fmt.Fprintln(out, "\n7b. the VIP list again: users whose plan changed enter or leave it")
	vipRep, err = startAndWatch(ctx, c, out, workflows.RunInput{Spec: vip}, true)
	if err != nil {
		return err
	}
	if vipRep.List != nil {
		st := emu.Stats(demoAPIKey)
		fmt.Fprintf(out, "\n   %d users entered the list (subscribed), %d left it (unsubscribed, %d channel unsubscribes); it has %d members\n",
			vipRep.Succeeded.Added, vipRep.Succeeded.Removed, st.ChannelUnsubscribes, len(emu.ListMembers(demoAPIKey, vipRep.List.ID)))
	}

	fmt.Fprintln(out, "\n8. a sample of what Iterable now holds")
	stored := emu.Users(demoAPIKey)
	for _, i := range []int{0, len(stored) / 2, len(stored) - 1} {
		if i < 0 || i >= len(stored) {
			continue
		}
		u := stored[i]
		keys := make([]string, 0, len(u.DataFields))
		for k := range u.DataFields {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Fprintf(out, "   %s:", u.Email)
		for _, k := range keys {
			fmt.Fprintf(out, " %s=%v", k, u.DataFields[k])
		}
		fmt.Fprintln(out)
	}
	fmt.Fprintf(out, "   %d profiles in the project; demo took %s\n", len(stored), time.Since(start).Round(time.Second))
	link := fmt.Sprintf("%s/namespaces/default/workflows?query=ActivationId%%3D%%27%s%%27", srv.UIURL, demoActivation)
	// The UI lives as long as the demo: keep it up for a person at a terminal, and never point
	// at it once it is gone.
	if *keep || interactive() {
		fmt.Fprintf(out, "\nWatch the runs in the Temporal UI: %s\n", link)
		fmt.Fprintln(out, "Running until Ctrl-C (the schedule fires every 15 minutes; Trigger it from the UI's Schedules page).")
		<-ctx.Done()
		return nil
	}
	fmt.Fprintln(out, "\nThe dev server and its UI stop with the demo. To watch the runs in the Temporal UI, run")
	fmt.Fprintln(out, "`go run ./starter demo --keep-running` (or `make demo` in a terminal): it stays up until Ctrl-C.")
	return nil
}

// interactive reports whether a person may be watching: standard input is a terminal (a
// character device that answers a terminal ioctl: /dev/null is a character device too).
func interactive() bool {
	return term.IsTerminal(int(os.Stdin.Fd()))
}

type demoUser struct {
	id       string
	email    string
	first    string
	plan     string
	ltv      float64
	active   bool
	signedUp time.Time
}

var (
	firstNames = []string{"Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "Donald"}
	plans      = []string{"free", "starter", "pro", "enterprise"}
)

// generateUsers makes a deterministic model, with a few rows that must not get through.
func generateUsers(n int) []demoUser {
	r := rand.New(rand.NewPCG(42, 7))
	base := time.Date(2022, 1, 1, 0, 0, 0, 0, time.UTC)
	users := make([]demoUser, 0, n+2)
	for i := 1; i <= n; i++ {
		users = append(users, demoUser{
			id:       strconv.Itoa(i),
			email:    fmt.Sprintf("user%06d@example.com", i),
			first:    firstNames[r.IntN(len(firstNames))],
			plan:     plans[r.IntN(len(plans))],
			ltv:      float64(r.IntN(100000)) / 100,
			active:   r.IntN(4) != 0,
			signedUp: base.Add(time.Duration(r.IntN(3*365*24)) * time.Hour),
		})
	}
	if n >= 10 {
		for _, i := range []int{n / 3, n / 2, n - 1} {
			users[i].email = fmt.Sprintf("broken-address-%d", i) // rejected before sending; held until it changes
		}
		dup := users[n/4]
		dup.email = "duplicate-" + dup.email
		users = append(users, dup)                                          // same key twice: never sent
		users = append(users, demoUser{id: "", email: "nokey@example.com"}) // NULL key: never sent
	}
	return users
}

// mutate changes one attribute of a share of the users and returns how many it changed.
func mutate(users []demoUser, share float64) int {
	r := rand.New(rand.NewPCG(7, 42))
	n := int(float64(len(users)) * share)
	seen := map[int]bool{}
	for len(seen) < n {
		i := r.IntN(len(users))
		if seen[i] || users[i].id == "" {
			continue
		}
		seen[i] = true
		switch len(seen) % 3 {
		case 0:
			users[i].plan = plans[(indexOf(plans, users[i].plan)+1)%len(plans)]
		case 1:
			users[i].ltv += 10
		default:
			users[i].active = !users[i].active
		}
	}
	return n
}

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return 0
}

func writeUsers(path string, users []demoUser) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{"user_id", "email", "first_name", "plan", "lifetime_value", "is_active", "signed_up_at"})
	for _, u := range users {
		_ = w.Write([]string{u.id, u.email, u.first, u.plan, strconv.FormatFloat(u.ltv, 'f', 2, 64),
			strconv.FormatBool(u.active), u.signedUp.Format("2006-01-02 15:04:05")})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// demoCodec is the payload codec of the demo: the configured keys, or a fresh key.
func demoCodec() (*codec.Codec, bool, error) {
	c, err := codec.FromEnv(os.LookupEnv)
	if err != nil || c != nil {
		return c, false, err
	}
	key := make([]byte, 32)
	if _, err := cryptorand.Read(key); err != nil {
		return nil, false, fmt.Errorf("demo key: %w", err)
	}
	keys, err := codec.ParseKeys("demo:" + base64.StdEncoding.EncodeToString(key))
	if err != nil {
		return nil, false, err
	}
	c, err = codec.New(keys)
	return c, true, err
}

// serveDemoCodec serves the codec server for the demo's UI on loopback (no token: only this
// machine's browser reaches it, and the UI cannot send a static token).
func serveDemoCodec(c *codec.Codec, port int, uiOrigin string, logger *slog.Logger) (string, func(), error) {
	lis, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return "", nil, fmt.Errorf("codec server: %w (is port %d taken? try --codec-port)", err, port)
	}
	srv := &http.Server{Handler: newCodecServerHandler(c, []string{uiOrigin, strings.Replace(uiOrigin, "localhost", "127.0.0.1", 1)}, nil, logger),
		ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	return "http://" + lis.Addr().String(), func() { _ = srv.Close() }, nil
}
