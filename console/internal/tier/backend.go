package tier

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/cloudskin/cloudskin/console/internal/objects"
	"github.com/cloudskin/cloudskin/console/internal/store"
)

// BlobRoute is the console's own upload endpoint (without S3); the API
// serves PUT on BlobRoute + "{id}".
const BlobRoute = "/api/v1/blobs/segments/"

// backend is where segment objects live: the console's object store or S3.
type backend interface {
	name() string
	// probe fails (wrapping ErrUnavail) when the store cannot take uploads.
	probe(ctx context.Context) error
	// target says how the agent uploads seg until exp.
	target(ctx context.Context, seg *store.StreamSegment, exp time.Time) (Upload, error)
	// verify checks the stored object against seg; a non-empty reason
	// means it is missing or differs.
	verify(ctx context.Context, seg *store.StreamSegment) (reason string, err error)
	// open reads a stored object; it may also be an io.ReadSeeker.
	open(ctx context.Context, seg *store.StreamSegment) (io.ReadCloser, error)
	remove(ctx context.Context, key string) error
}

// uploadHeaders are the headers the agent must send with its PUT: S3 checks
// the body against Content-MD5 (and x-amz-checksum-sha256) itself.
func uploadHeaders(seg *store.StreamSegment) map[string]string {
	md5raw, _ := hex.DecodeString(seg.MD5)
	shaRaw, _ := hex.DecodeString(seg.SHA256)
	return map[string]string{
		"Content-Type":          "application/octet-stream",
		"Content-MD5":           base64.StdEncoding.EncodeToString(md5raw),
		"x-amz-checksum-sha256": base64.StdEncoding.EncodeToString(shaRaw),
	}
}

// fsBackend keeps segments in the console's object store; agents upload
// through the console's blob endpoint with an HMAC-signed URL.
type fsBackend struct {
	objs   objects.Store
	secret []byte
}

func (b *fsBackend) name() string                    { return "objects" }
func (b *fsBackend) probe(ctx context.Context) error { return nil }

func (b *fsBackend) target(ctx context.Context, seg *store.StreamSegment, exp time.Time) (Upload, error) {
	e := strconv.FormatInt(exp.Unix(), 10)
	q := url.Values{"exp": {e}, "sig": {sign(b.secret, seg.ID, e)}}
	return Upload{Method: http.MethodPut, URL: BlobRoute + seg.ID + "?" + q.Encode(), Headers: uploadHeaders(seg), ExpiresAt: exp.UTC()}, nil
}

// sign is the upload URL's signature: HMAC-SHA256 over the segment id and
// the expiry, so a URL works for one segment until it expires.
func sign(secret []byte, id, exp string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("cloudskin segment upload\x00" + id + "\x00" + exp))
	return hex.EncodeToString(m.Sum(nil))
}

func (b *fsBackend) verify(ctx context.Context, seg *store.StreamSegment) (string, error) {
	info, err := b.objs.Stat(ctx, seg.Key)
	if errors.Is(err, objects.ErrNotFound) {
		return reasonMissing, nil
	}
	if err != nil {
		return "", err
	}
	if info.Size != seg.Bytes {
		return reasonSize, nil
	}
	rc, err := b.objs.Get(ctx, seg.Key)
	if errors.Is(err, objects.ErrNotFound) {
		return reasonMissing, nil
	}
	if err != nil {
		return "", err
	}
	defer rc.Close()
	// The blob endpoint only ever stores verified bytes; reading them once
	// more is what lets the agent delete its copy without a doubt.
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(rc, seg.Bytes+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", seg.Key, err)
	}
	if n != seg.Bytes {
		return reasonSize, nil
	}
	if hex.EncodeToString(h.Sum(nil)) != seg.SHA256 {
		return reasonChecksum, nil
	}
	return "", nil
}

func (b *fsBackend) open(ctx context.Context, seg *store.StreamSegment) (io.ReadCloser, error) {
	rc, err := b.objs.Get(ctx, seg.Key)
	if errors.Is(err, objects.ErrNotFound) {
		return nil, fmt.Errorf("%w: segment %s: object %s is missing", ErrCorrupt, seg.ID, seg.Key)
	}
	return rc, err
}

func (b *fsBackend) remove(ctx context.Context, key string) error { return b.objs.Delete(ctx, key) }

// s3Backend keeps segments in an S3 bucket; agents upload with presigned
// URLs and the console reads with its own credentials.
type s3Backend struct {
	client *minio.Client
	bucket string
}

func (b *s3Backend) name() string { return "s3" }

func (b *s3Backend) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ok, err := b.client.BucketExists(ctx, b.bucket)
	if err != nil {
		return fmt.Errorf("%w: s3 bucket %s: %w", ErrUnavail, b.bucket, err)
	}
	if !ok {
		return fmt.Errorf("%w: s3 bucket %s does not exist", ErrUnavail, b.bucket)
	}
	return nil
}

func (b *s3Backend) target(ctx context.Context, seg *store.StreamSegment, exp time.Time) (Upload, error) {
	headers := uploadHeaders(seg)
	signed := http.Header{}
	for k, v := range headers {
		signed.Set(k, v)
	}
	// With a region configured, presigning is local: no request to S3.
	u, err := b.client.PresignHeader(ctx, http.MethodPut, b.bucket, seg.Key, time.Until(exp).Round(time.Second), nil, signed)
	if err != nil {
		return Upload{}, fmt.Errorf("presign upload of %s: %w", seg.Key, err)
	}
	return Upload{Method: http.MethodPut, URL: u.String(), Headers: headers, ExpiresAt: exp.UTC()}, nil
}

func (b *s3Backend) verify(ctx context.Context, seg *store.StreamSegment) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	info, err := b.client.StatObject(ctx, b.bucket, seg.Key, minio.StatObjectOptions{Checksum: true})
	if isNoSuchKey(err) {
		return reasonMissing, nil
	}
	if err != nil {
		return "", fmt.Errorf("%w: stat %s: %w", ErrUnavail, seg.Key, err)
	}
	if info.Size != seg.Bytes {
		return reasonSize, nil
	}
	// For a single PUT the ETag is the body's MD5 (hex); S3 compared the
	// body with Content-MD5 on the way in.
	if !strings.EqualFold(strings.Trim(info.ETag, `"`), seg.MD5) {
		return reasonChecksum, nil
	}
	if info.ChecksumSHA256 != "" {
		raw, _ := hex.DecodeString(seg.SHA256)
		if info.ChecksumSHA256 != base64.StdEncoding.EncodeToString(raw) {
			return reasonChecksum, nil
		}
	}
	return "", nil
}

func (b *s3Backend) open(ctx context.Context, seg *store.StreamSegment) (io.ReadCloser, error) {
	obj, err := b.client.GetObject(ctx, b.bucket, seg.Key, minio.GetObjectOptions{})
	if err != nil {
		return nil, fmt.Errorf("%w: get %s: %w", ErrUnavail, seg.Key, err)
	}
	// GetObject is lazy: Stat surfaces a missing object or an outage now.
	if _, err := obj.Stat(); err != nil {
		obj.Close()
		if isNoSuchKey(err) {
			return nil, fmt.Errorf("%w: segment %s: object %s is missing", ErrCorrupt, seg.ID, seg.Key)
		}
		return nil, fmt.Errorf("%w: get %s: %w", ErrUnavail, seg.Key, err)
	}
	return obj, nil
}

func (b *s3Backend) remove(ctx context.Context, key string) error {
	if err := b.client.RemoveObject(ctx, b.bucket, key, minio.RemoveObjectOptions{}); err != nil && !isNoSuchKey(err) {
		return fmt.Errorf("%w: remove %s: %w", ErrUnavail, key, err)
	}
	return nil
}

func isNoSuchKey(err error) bool {
	if err == nil {
		return false
	}
	r := minio.ToErrorResponse(err)
	return r.Code == "NoSuchKey" || (r.StatusCode == http.StatusNotFound && r.Code != "NoSuchBucket")
}
