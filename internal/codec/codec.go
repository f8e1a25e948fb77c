// Package codec encrypts Temporal payloads with AES-256-GCM so that workflow inputs, results,
// activity arguments, memo values, query answers and failure messages are opaque to the
// Temporal service and to anyone reading its database. Keys carry ids and can be rotated: the
// first key encrypts, every configured key decrypts. Payloads that are not encrypted (histories
// written before encryption was turned on) are decoded unchanged.
package codec

import (
	"crypto/rand"
	"errors"
	"fmt"
	"strings"

	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"google.golang.org/protobuf/proto"
)

// Payload metadata of an encrypted payload. The original payload (its metadata and data) is the
// plaintext, so even its encoding is hidden.
const (
	// MetadataEncodingEncrypted is the "encoding" of encrypted payloads.
	MetadataEncodingEncrypted = "binary/encrypted"
	// MetadataKeyID names the key a payload was encrypted with.
	MetadataKeyID = "encryption-key-id"
	// MetadataCipher names the algorithm, for other tools reading the history.
	MetadataCipher = "encryption-cipher"
	cipherName     = "AES256-GCM"
)

// aadPrefix binds the ciphertext to this format and to its key id.
const aadPrefix = "activations-codec/v1:"

// Codec is a converter.PayloadCodec encrypting with the active key of its Keys.
type Codec struct {
	keys *Keys
}

var _ converter.PayloadCodec = (*Codec)(nil)

// New returns a codec over keys (see LoadKeys and ParseKeys).
func New(keys *Keys) (*Codec, error) {
	if keys == nil || len(keys.ids) == 0 {
		return nil, errors.New("codec: no keys")
	}
	return &Codec{keys: keys}, nil
}

// FromEnv loads the keys (LoadKeys) and returns a codec, or nil, nil when no key is configured.
func FromEnv(lookup LookupEnv) (*Codec, error) {
	keys, err := LoadKeys(lookup)
	if err != nil || keys == nil {
		return nil, err
	}
	return New(keys)
}

// ActiveKeyID is the id of the key new payloads are encrypted with.
func (c *Codec) ActiveKeyID() string { return c.keys.Active() }

// KeyIDs lists every key the codec can decrypt with, the active one first.
func (c *Codec) KeyIDs() []string { return c.keys.IDs() }

// String names the key ids only.
func (c *Codec) String() string { return c.keys.String() }

// GoString keeps %#v from dumping the ciphers' key schedules.
func (c *Codec) GoString() string { return c.keys.String() }

// Encode encrypts every payload with the active key and a fresh random nonce.
func (c *Codec) Encode(payloads []*commonpb.Payload) ([]*commonpb.Payload, error) {
	id := c.keys.active
	aead := c.keys.aeads[id]
	aad := []byte(aadPrefix + id)
	out := make([]*commonpb.Payload, len(payloads))
	for i, p := range payloads {
		if p == nil {
			continue
		}
		plain, err := proto.Marshal(p)
		if err != nil {
			return nil, fmt.Errorf("encrypt payload: marshal: %w", err)
		}
		nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plain)+aead.Overhead())
		if _, err := rand.Read(nonce); err != nil {
			return nil, fmt.Errorf("encrypt payload: nonce: %w", err)
		}
		out[i] = &commonpb.Payload{
			Metadata: map[string][]byte{
				converter.MetadataEncoding: []byte(MetadataEncodingEncrypted),
				MetadataKeyID:              []byte(id),
				MetadataCipher:             []byte(cipherName),
			},
			Data: aead.Seal(nonce, nonce, plain, aad),
		}
	}
	return out, nil
}

// Decode decrypts encrypted payloads with the key their metadata names and returns the others
// unchanged, so that histories written before encryption was turned on stay readable.
func (c *Codec) Decode(payloads []*commonpb.Payload) ([]*commonpb.Payload, error) {
	out := make([]*commonpb.Payload, len(payloads))
	for i, p := range payloads {
		if p == nil || string(p.GetMetadata()[converter.MetadataEncoding]) != MetadataEncodingEncrypted {
			out[i] = p
			continue
		}
		d, err := c.decrypt(p)
		if err != nil {
			return nil, err
		}
		out[i] = d
	}
	return out, nil
}

func (c *Codec) decrypt(p *commonpb.Payload) (*commonpb.Payload, error) {
	idBytes, ok := p.GetMetadata()[MetadataKeyID]
	if !ok || len(idBytes) == 0 {
		return nil, fmt.Errorf("decrypt payload: no %s in its metadata", MetadataKeyID)
	}
	id := string(idBytes)
	aead, ok := c.keys.aeads[id]
	if !ok {
		return nil, fmt.Errorf("decrypt payload: it was encrypted with key id %q, which is not configured here (keys: %s; add it to %s or %s as a decrypt-only key)",
			printable(id), strings.Join(c.keys.ids, ", "), EnvKeys, EnvKeysFile)
	}
	data := p.GetData()
	if len(data) < aead.NonceSize()+aead.Overhead() {
		return nil, fmt.Errorf("decrypt payload with key id %q: ciphertext too short (%d bytes)", id, len(data))
	}
	nonce, sealed := data[:aead.NonceSize()], data[aead.NonceSize():]
	plain, err := aead.Open(nil, nonce, sealed, []byte(aadPrefix+id))
	if err != nil {
		// GCM says only "message authentication failed": the data or its key id was altered,
		// or the key under this id is not the one that encrypted it.
		return nil, fmt.Errorf("decrypt payload with key id %q: authentication failed (payload altered, or a different key is configured under this id)", id)
	}
	var orig commonpb.Payload
	if err := proto.Unmarshal(plain, &orig); err != nil {
		return nil, fmt.Errorf("decrypt payload with key id %q: unmarshal: %w", id, err)
	}
	return &orig, nil
}

// printable bounds an id read from a payload before quoting it in an error.
func printable(id string) string {
	if len(id) > maxKeyIDLen {
		return id[:maxKeyIDLen] + "…"
	}
	return id
}

// NewDataConverter wraps the SDK's default data converter with codec.
func NewDataConverter(codec converter.PayloadCodec) converter.DataConverter {
	return converter.NewCodecDataConverter(converter.GetDefaultDataConverter(), codec)
}

// NewFailureConverter encodes failures with dc, including their messages and stack traces
// (EncodeCommonAttributes), which Temporal otherwise stores in plaintext: an error message can
// quote data.
func NewFailureConverter(dc converter.DataConverter) converter.FailureConverter {
	return temporal.NewDefaultFailureConverter(temporal.DefaultFailureConverterOptions{DataConverter: dc, EncodeCommonAttributes: true})
}

// Converters returns the data and failure converters for codec; both nil when codec is nil.
func Converters(codec *Codec) (converter.DataConverter, converter.FailureConverter) {
	if codec == nil {
		return nil, nil
	}
	dc := NewDataConverter(codec)
	return dc, NewFailureConverter(dc)
}

// IsEncrypted reports whether p was encrypted by this codec format.
func IsEncrypted(p *commonpb.Payload) bool {
	return string(p.GetMetadata()[converter.MetadataEncoding]) == MetadataEncodingEncrypted
}
