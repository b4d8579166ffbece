package testenv

import (
	"context"
	"fmt"
	"go/build"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// VersityGWInstall is how to get the S3 server the tests run against.
const VersityGWInstall = "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"

// VersityGWBinary finds versitygw on PATH or in $(go env GOPATH)/bin; its
// absence fails the test (CI installs it, and a skip would hide that).
func VersityGWBinary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	var dirs []string
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		dirs = append(dirs, filepath.SplitList(strings.TrimSpace(string(out)))...)
	}
	dirs = append(dirs, filepath.SplitList(build.Default.GOPATH)...)
	for _, d := range dirs {
		p := filepath.Join(d, "bin", "versitygw")
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	t.Fatalf("versitygw (an S3 server) is not installed: run %s", VersityGWInstall)
	return ""
}

// S3 is a real S3 server for one test: versitygw with its POSIX backend in
// a temporary directory, on a loopback port, with one bucket. Stop and Start
// simulate an outage; the port and the stored objects survive them.
type S3 struct {
	Endpoint  string // host:port, plain HTTP
	AccessKey string
	SecretKey string
	Bucket    string
	Region    string
	Dir       string // the backend's root; the bucket is a directory in it

	t    testing.TB
	bin  string
	proc *Process
}

// NewS3 starts versitygw and creates the bucket; the server stops when the
// test ends.
func NewS3(t testing.TB) *S3 {
	t.Helper()
	dir := t.TempDir()
	s := &S3{
		Endpoint:  fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		AccessKey: "cloudskin-test",
		SecretKey: "cloudskin-test-secret-key",
		Bucket:    "cloudskin",
		Region:    "us-east-1",
		Dir:       filepath.Join(dir, "root"),
		t:         t,
		bin:       VersityGWBinary(t),
	}
	// Metadata (ETags, content types) goes to a sidecar directory rather
	// than extended attributes, which some test filesystems (tmpfs) lack.
	for _, d := range []string{s.Dir, filepath.Join(dir, "meta")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	s.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := s.Client().MakeBucket(ctx, s.Bucket, minio.MakeBucketOptions{Region: s.Region}); err != nil {
		t.Fatalf("versitygw: create bucket %s: %v\n%s", s.Bucket, err, Tail(s.proc.Out.String(), 4000))
	}
	return s
}

// URL is the server's base URL.
func (s *S3) URL() string { return "http://" + s.Endpoint }

// Client is an S3 client with the root keys, for tests to look behind the
// code under test.
func (s *S3) Client() *minio.Client {
	s.t.Helper()
	c, err := minio.New(s.Endpoint, &minio.Options{
		Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""), Region: s.Region, MaxRetries: 1,
	})
	if err != nil {
		s.t.Fatal(err)
	}
	return c
}

// Start runs the server (again, after Stop) on the same port and directory
// and waits until it answers HTTP.
func (s *S3) Start() {
	s.t.Helper()
	if s.proc != nil && !s.proc.Exited() {
		return
	}
	meta := filepath.Join(filepath.Dir(s.Dir), "meta")
	env := []string{"ROOT_ACCESS_KEY_ID=" + s.AccessKey, "ROOT_SECRET_ACCESS_KEY=" + s.SecretKey}
	s.proc = Start(s.t, "versitygw", env, s.bin,
		"--port", s.Endpoint, "--region", s.Region, "--quiet",
		"posix", "--sidecar", meta, s.Dir)
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if s.proc.Exited() {
			s.t.Fatalf("versitygw exited:\n%s", Tail(s.proc.Out.String(), 4000))
		}
		// Any HTTP answer (an unsigned request gets 403) means it serves.
		if resp, err := client.Get(s.URL() + "/"); err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("versitygw not answering on %s:\n%s", s.Endpoint, Tail(s.proc.Out.String(), 4000))
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// Stop ends the server and waits until it has exited, so its port refuses
// connections.
func (s *S3) Stop() {
	s.t.Helper()
	if s.proc == nil {
		return
	}
	s.proc.Kill(syscall.SIGTERM)
}
