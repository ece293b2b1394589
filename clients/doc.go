// Package clients holds the real-client test suite: its tests drive the built sidecar with the
// HTTP clients legacy services use (curl, Python's http.client and requests, Node's fetch and
// http, Java's HttpClient in HTTP/1.1 and HTTP/2 modes) and a raw socket, and check that what
// the upstream receives is what the client sent, byte for byte, but for the header changes the
// contract names. The clients' scripts are in testdata/. The package has no code of its own.
package clients
