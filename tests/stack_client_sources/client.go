// Command client fetches one URL with Go's net/http and prints the response body.
//
// It is an ordinary Go program: DefaultClient (HTTP/2 over TLS when the server agrees), trust
// from SSL_CERT_FILE, an explicit proxy from HTTPS_PROXY. It fails unless the answer is 200
// over HTTP/2, so a fingerprint test knows which protocol it measured.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: client URL")
		os.Exit(2)
	}
	resp, err := http.Get(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		fmt.Fprintf(os.Stderr, "%s %s: %s\n", resp.Proto, resp.Status, body)
		os.Exit(1)
	}
	os.Stdout.Write(body)
}
