package cli

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/spf13/pflag"
)

// tlsFlags are the optional TLS settings of the peer server and client.
type tlsFlags struct {
	cert, key, ca string
}

func (t *tlsFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&t.cert, "tls-cert", "", "PEM certificate: the peer server speaks HTTPS (set --tls-key too)")
	fs.StringVar(&t.key, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&t.ca, "tls-ca", "", "PEM CA bundle peers' certificates are checked against (default: the system roots when TLS is on); with --tls-cert and --tls-key, peers must also present a client certificate it signed")
}

// configs returns the server and client TLS configurations, both nil when
// TLS is off. TLS is on with a certificate and key, or with a CA alone (a
// host that pulls over TLS but serves nothing, such as a one-shot sync).
func (t *tlsFlags) configs() (server, client *tls.Config, err error) {
	if (t.cert == "") != (t.key == "") {
		return nil, nil, usageError("--tls-cert and --tls-key go together: set both, or neither for plain HTTP")
	}
	var pool *x509.CertPool
	if t.ca != "" {
		var err error
		if pool, err = readCA(t.ca); err != nil {
			return nil, nil, fmt.Errorf("--tls-ca %s: %w", t.ca, err)
		}
	}
	if t.cert == "" && pool == nil {
		return nil, nil, nil
	}
	client = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
	if t.cert != "" {
		pair, err := tls.LoadX509KeyPair(t.cert, t.key)
		if err != nil {
			return nil, nil, fmt.Errorf("--tls-cert %s / --tls-key %s: %w", t.cert, t.key, err)
		}
		server = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}
		if pool != nil {
			// One CA for the fleet: peers prove who they are both ways.
			server.ClientCAs, server.ClientAuth = pool, tls.RequireAndVerifyClientCert
			client.Certificates = []tls.Certificate{pair}
		}
	}
	return server, client, nil
}

// readCA reads a PEM CA bundle. Its errors do not repeat the file name:
// the caller names the flag and the file.
func readCA(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("no PEM certificate in it")
	}
	return pool, nil
}
