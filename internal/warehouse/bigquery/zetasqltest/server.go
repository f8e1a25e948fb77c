// Package zetasqltest runs GoogleSQL's reference analyzer (the ZetaSQL LocalService gRPC server)
// over SQL in tests: it parses scripts, analyzes every statement against a catalog of typed
// tables with declared query parameters, and adds the tables that the script creates to the
// catalog as it goes.
//
// The server is a prebuilt Linux x86-64 binary with its .proto files, from the npm package
// @fivetrandevelopers/zetasql; `make zetasql` (and `make test`) unpack it into bin/. Start reads
// its path from ZETASQL_SERVER and the .proto files from ZETASQL_PROTOS (default: protos/ beside
// the server). The .proto files are compiled when the server starts (protocompile) and the
// messages are built and read as JSON through dynamicpb: no generated code.
package zetasqltest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/bufbuild/protocompile"
	"github.com/bufbuild/protocompile/linker"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
)

// Environment variables read by Start.
const (
	EnvServer = "ZETASQL_SERVER" // path of remote_server.so
	EnvProtos = "ZETASQL_PROTOS" // folder of local_service.proto; default: protos/ beside the server
)

const service = "zetasql.local_service.ZetaSqlLocalService"

// Server is a running LocalService. Its methods are safe for concurrent use.
type Server struct {
	conn    *grpc.ClientConn
	methods protoreflect.ServiceDescriptor
	files   linker.Files
	lang    json.RawMessage // LanguageOptionsProto: maximum features, PRODUCT_EXTERNAL
}

// Start starts a server for the test and stops it when the test ends. Without ZETASQL_SERVER the
// test is skipped, or fails when CI=true: CI must run the analyzer.
func Start(t testing.TB) *Server {
	t.Helper()
	path := os.Getenv(EnvServer)
	if path == "" {
		msg := "GoogleSQL analyzer not available: " + EnvServer + " is not set (`make test` sets it; " +
			"`make zetasql` unpacks the server into bin/, then ZETASQL_SERVER=$PWD/bin/zetasql-*/remote_server.so)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + "; CI=true, so this is a failure, not a skip")
		}
		if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
			msg += "; the npm server runs on Linux x86-64 only"
		}
		t.Skip(msg)
	}
	protos := os.Getenv(EnvProtos)
	if protos == "" {
		protos = filepath.Join(filepath.Dir(path), "protos")
	}
	s, stop, err := start(path, protos)
	if err != nil {
		t.Fatalf("start the GoogleSQL analyzer (%s=%s): %v", EnvServer, path, err)
	}
	t.Cleanup(stop)
	return s
}

// compiled caches the compiled .proto files per folder: every test of a binary shares them.
var compiled sync.Map // folder → *compileResult

type compileResult struct {
	once  sync.Once
	files linker.Files
	err   error
}

func compileProtos(dir string) (linker.Files, error) {
	v, _ := compiled.LoadOrStore(dir, &compileResult{})
	c := v.(*compileResult)
	c.once.Do(func() {
		if _, err := os.Stat(filepath.Join(dir, "local_service.proto")); err != nil {
			c.err = fmt.Errorf("the server's .proto files: %w (set %s)", err, EnvProtos)
			return
		}
		comp := protocompile.Compiler{Resolver: protocompile.WithStandardImports(
			&protocompile.SourceResolver{ImportPaths: []string{dir}})}
		c.files, c.err = comp.Compile(context.Background(), "local_service.proto")
	})
	return c.files, c.err
}

func start(path, protos string) (*Server, func(), error) {
	if fi, err := os.Stat(path); err != nil {
		return nil, nil, err
	} else if fi.Mode()&0o111 == 0 {
		return nil, nil, fmt.Errorf("%s is not executable", path)
	}
	files, err := compileProtos(protos)
	if err != nil {
		return nil, nil, err
	}
	var desc protoreflect.ServiceDescriptor
	if d, err := files.AsResolver().FindDescriptorByName(service); err == nil {
		desc, _ = d.(protoreflect.ServiceDescriptor)
	}
	if desc == nil {
		return nil, nil, fmt.Errorf("service %s is not in %s", service, protos)
	}
	var lastErr error
	for range 3 { // a port picked free can be taken before the server binds it
		addr, stop, err := launch(path)
		if err != nil {
			lastErr = err
			continue
		}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20), grpc.MaxCallSendMsgSize(256<<20)))
		if err != nil {
			stop()
			return nil, nil, err
		}
		s := &Server{conn: conn, methods: desc, files: files}
		var lang json.RawMessage
		if err := s.call(context.Background(), "GetLanguageOptions", map[string]any{"maximum_features": true}, &lang); err != nil {
			_ = conn.Close()
			stop()
			return nil, nil, fmt.Errorf("GetLanguageOptions: %w", err)
		}
		s.lang, err = languageOptions(lang)
		if err != nil {
			_ = conn.Close()
			stop()
			return nil, nil, err
		}
		return s, func() { _ = conn.Close(); stop() }, nil
	}
	return nil, nil, lastErr
}

// launch starts the server on a free loopback port and waits until it accepts connections;
// stop kills it.
func launch(path string) (addr string, stop func(), err error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	var out bytes.Buffer
	cmd := exec.Command(path, "127.0.0.1", strconv.Itoa(port))
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop = func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return "", nil, fmt.Errorf("the server exited at start: %s", bytes.TrimSpace(out.Bytes()))
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			_ = c.Close()
			return addr, stop, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	return "", nil, fmt.Errorf("the server did not listen on %s within 30s: %s", addr, bytes.TrimSpace(out.Bytes()))
}

// languageOptions turns on the product mode of BigQuery (external: no INT32, UINT64, FLOAT,
// protos or enums) on top of the maximum features; an empty supported_statement_kinds list
// allows every statement kind.
func languageOptions(raw json.RawMessage) (json.RawMessage, error) {
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	m["product_mode"] = "PRODUCT_EXTERNAL"
	m["name_resolution_mode"] = "NAME_RESOLUTION_DEFAULT"
	delete(m, "supported_statement_kinds")
	return json.Marshal(m)
}

// call runs one RPC; req is any value that encodes as the request's JSON, resp receives the
// response's JSON (proto field names).
func (s *Server) call(ctx context.Context, method string, req, resp any) error {
	md := s.methods.Methods().ByName(protoreflect.Name(method))
	if md == nil {
		return fmt.Errorf("no method %s", method)
	}
	in, err := json.Marshal(req)
	if err != nil {
		return err
	}
	reqMsg := dynamicpb.NewMessage(md.Input())
	if err := (protojson.UnmarshalOptions{Resolver: s.files.AsResolver()}).Unmarshal(in, reqMsg); err != nil {
		return fmt.Errorf("%s request: %w", method, err)
	}
	respMsg := dynamicpb.NewMessage(md.Output())
	if err := s.conn.Invoke(ctx, "/"+service+"/"+method, reqMsg, respMsg); err != nil {
		if st, ok := status.FromError(err); ok {
			return &Error{Message: st.Message()}
		}
		return err
	}
	out, err := (protojson.MarshalOptions{UseProtoNames: true, Resolver: s.files.AsResolver()}).Marshal(respMsg)
	if err != nil {
		return fmt.Errorf("%s response: %w", method, err)
	}
	return json.Unmarshal(out, resp)
}

// Error is what the analyzer says about SQL it refuses.
type Error struct{ Message string }

func (e *Error) Error() string { return e.Message }
