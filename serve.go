package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/lmittmann/tint"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/admin"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/config"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/connect"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/events"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/outbound"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/proxy"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/redact"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/secretfile"
)

// loadConfig reads --env-file (the process environment wins) and parses the configuration.
func loadConfig(environ []string, envFile string, overlay map[string]string) (*config.Config, error) {
	env := config.Environ(environ)
	if envFile != "" {
		var err error
		if env, err = config.LoadEnvFile(envFile, env); err != nil {
			return nil, err
		}
	}
	for k, v := range overlay {
		if _, set := env[k]; !set {
			env[k] = v
		}
	}
	return config.Parse(env)
}

// newLogHandler builds the process log handler: tint text (colour only on a terminal) or JSON.
// JSON writes durations as text with their unit ("1.5s"), as the text handler does, not as
// bare nanoseconds.
func newLogHandler(cfg *config.Config, w io.Writer) slog.Handler {
	if cfg.LogFormat == "json" {
		return slog.NewJSONHandler(w, &slog.HandlerOptions{Level: cfg.LogLevel, ReplaceAttr: durationText})
	}
	return tint.NewTextHandler(w, &tint.Options{Level: cfg.LogLevel, NoColor: !isTerminal(w), TimeFormat: time.RFC3339})
}

// durationText is a ReplaceAttr that writes a duration as its String ("1.5s").
func durationText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// configSecrets lists the configuration's secret values, for redaction by value.
func configSecrets(cfg *config.Config) []string {
	out := []string{cfg.OAuthClientSecret.Reveal(), cfg.AdminToken.Reveal(), cfg.EventsKey.Reveal()}
	for _, t := range cfg.ClientTokens {
		out = append(out, t.Reveal())
	}
	for _, k := range cfg.EncryptionKeys {
		out = append(out, base64.StdEncoding.EncodeToString(k), string(k))
	}
	for _, k := range cfg.ConnectKeys {
		out = append(out, base64.StdEncoding.EncodeToString(k), string(k))
	}
	if u, err := url.Parse(cfg.Store); err == nil && u.User != nil {
		if p, ok := u.User.Password(); ok {
			out = append(out, p)
		}
	}
	return out
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// usageServe is serve's usage line.
const usageServe = "usage: serve [--env-file PATH] [--dev]\n" +
	"The configuration comes from PLEO_PROXY_* environment variables (config.example.env lists them);\n" +
	"--dev runs against an embedded mock Pleo with demo companies."

// serve runs the sidecar until ctx ends (a signal) or a listener fails. Each step builds
// what the next one needs, in this order; what is built is closed, in reverse, on return.
func serve(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	envFile, dev, help, err := serveFlags(args, stdout)
	if help || err != nil {
		return err
	}
	s := &instance{dev: dev, stdout: stdout}
	defer s.close()
	if err := s.configure(environ, envFile); err != nil {
		return err
	}
	s.observe(stderr)
	if err := s.openStore(ctx); err != nil {
		return err
	}
	if err := s.buildBroker(); err != nil {
		return err
	}
	if err := s.buildHandlers(); err != nil {
		return err
	}
	if err := s.bindListeners(); err != nil {
		return err
	}
	s.start(ctx)
	return s.shutdown(ctx, s.wait(ctx))
}

// serveFlags parses serve's flags: --env-file and --dev. help is true when usage was asked
// for (and printed).
func serveFlags(args []string, stdout io.Writer) (envFile string, dev, help bool, err error) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	envFileFlag := fs.String("env-file", "", "load a dotenv file first (the process environment wins)")
	devFlag := fs.Bool("dev", false, "run against an embedded mock Pleo with demo companies (no account, no network)")
	if help, err := noArgs(fs, invocation{args: args, stdout: stdout}, usageServe); help || err != nil {
		return "", false, help, err
	}
	return *envFileFlag, *devFlag, false, nil
}

// instance holds the parts serve builds, step by step, so each step reads as one method.
type instance struct {
	dev    bool
	stdout io.Writer

	// configure
	mock *devPleo // the embedded mock Pleo of --dev, or nil
	cfg  *config.Config

	// observe
	secrets *redact.Set
	log     *slog.Logger
	reg     *prometheus.Registry
	m       *metrics.Metrics

	// openStore
	secretWatch *secretfile.Watcher
	live        *liveSecrets
	memLimit    int64
	memSource   string
	rawStore    credentials.Store // as opened, for the optional interfaces (sweep lead, claims)
	store       credentials.Store // instrumented

	// buildBroker
	links    *connectLinks
	notifier *events.Notifier
	broker   *credentials.Broker

	// buildHandlers
	upstreamTransport http.RoundTripper
	handler           *proxy.Handler
	adminHandler      *admin.Handler

	// bindListeners
	dataLn, adminLn, connectLn net.Listener
	dataSrv, adminSrv          *http.Server
	connectSrv                 *http.Server // nil when the consent flow is off
	connectAddr                string

	// start
	stopBg       context.CancelFunc
	notifierDone chan struct{}
	serveErr     chan error
}

// close releases what the steps built, in reverse order: the background loops, the broker,
// the store, the mock Pleo.
func (s *instance) close() {
	if s.stopBg != nil {
		s.stopBg()
	}
	if s.broker != nil {
		s.broker.Close()
	}
	if s.store != nil {
		s.store.Close()
	}
	if s.mock != nil {
		s.mock.Close()
	}
}

// configure starts the mock Pleo under --dev (its addresses become defaults) and reads the
// configuration.
func (s *instance) configure(environ []string, envFile string) error {
	overlay := map[string]string(nil)
	if s.dev {
		mock, err := startDevPleo()
		if err != nil {
			return err
		}
		s.mock = mock
		overlay = mock.environ()
	}
	cfg, err := loadConfig(environ, envFile, overlay)
	if err != nil {
		return err
	}
	s.cfg = cfg
	return nil
}

// observe sets up the logger (redacting every configured secret) and the metrics registry.
func (s *instance) observe(stderr io.Writer) {
	s.secrets = redact.NewSet(4 * s.cfg.CacheSize)
	s.secrets.AddPermanent(configSecrets(s.cfg)...)
	s.log = slog.New(redact.NewHandler(newLogHandler(s.cfg, stderr), s.secrets))
	s.reg = metrics.NewRegistry()
	s.m = metrics.New(s.reg)
}

// openStore watches the secret files, builds the sealer, applies the memory limit and opens
// the credential store (seeded with demo companies under --dev).
func (s *instance) openStore(ctx context.Context) error {
	cfg := s.cfg
	// Secret files are polled as often as the file store is.
	s.secretWatch = secretfile.NewWatcher(secretfile.Options{Interval: cfg.StorePollInterval, Logger: s.log, OnReload: s.m.SecretReload})
	s.live = watchSecrets(s.secretWatch, cfg, s.secrets)
	sealer, err := newSealer(cfg)
	if err != nil {
		return err
	}
	if sealer != nil {
		if err := sealer.SetKeys(s.live.encryptionKeys.Load()); err != nil { // the file as read now
			return fmt.Errorf("PLEO_PROXY_ENCRYPTION_KEY: %w", err)
		}
		s.live.encryptionKeys.OnChange(func(keys [][]byte) { _ = sealer.SetKeys(keys) }) // validated by the parse
	}
	s.memLimit, s.memSource = applyMemoryLimit(cfg.MemoryLimit, memlimit.FromCgroup, s.log)
	rawStore, err := credentials.Open(cfg.Store, credentials.OpenOptions{
		PollInterval:  cfg.StorePollInterval,
		Logger:        s.log,
		Sealer:        sealer,
		OnReloadError: func(error) { s.m.StoreReloadFailed() },
	})
	if err != nil {
		return err
	}
	s.rawStore = rawStore
	s.store = credentials.Instrument(rawStore, s.m)
	if s.mock != nil {
		return s.mock.seed(ctx, s.store)
	}
	return nil
}

// buildBroker builds the connect-link signer, the event notifier and the broker that holds
// every company's tokens, and lets a reloaded client secret end the back-offs.
func (s *instance) buildBroker() error {
	cfg, log := s.cfg, s.log
	links, err := connectLinksOf(cfg, log)
	if err != nil {
		return err
	}
	s.links = links
	links.followKeys(s.live, log)
	notifier, err := newNotifier(cfg, s.rawStore, links, log, metrics.NewEvents(s.reg))
	if err != nil {
		return err
	}
	s.notifier = notifier
	broker, err := credentials.NewBroker(credentials.BrokerOptions{
		Store:     s.store,
		CacheSize: cfg.CacheSize,
		OAuth: credentials.OAuthClient{
			ClientID:           cfg.OAuthClientID,
			ClientSecret:       cfg.OAuthClientSecret,
			ClientSecretSource: s.live.clientSecret.Load,
			TokenURL:           cfg.OAuthTokenURL.String(),
		},
		RefreshBefore:     cfg.RefreshBefore,
		TokenTimeout:      cfg.TokenTimeout,
		KeepaliveInterval: cfg.KeepaliveInterval,
		Logger:            log,
		Metrics:           s.m,
		Secrets:           s.secrets,
		// The token endpoint is reached under the same outbound policy as the upstream; the
		// broker bounds each call itself (up to twice TOKEN_TIMEOUT for the answer, with a
		// grace for a process that resumes with the answer in its socket), so the transport's
		// header timeout is only a backstop beyond the refresh lease (6 x TOKEN_TIMEOUT): one
		// that fired sooner would throw away an answer that arrived while the process was
		// paused, the very case the broker's grace is for (TestPause/request_unanswered).
		HTTPClient:    outbound.NewClient(outbound.NewTransport(outbound.Options{ResponseHeaderTimeout: 10 * cfg.TokenTimeout}), 0),
		OnStateChange: func(c credentials.Credential, st credentials.Status) { notifier.Notify(c, events.State(st)) },
		SweepLeader:   sweepLeader(s.rawStore),
	})
	if err != nil {
		return err
	}
	s.broker = broker
	// Companies backed off after the old secret was refused (invalid_client) try the new one
	// now rather than at the end of each back-off.
	s.live.clientSecret.OnChange(func(credentials.Secret) { broker.ResetBackoff() })
	return nil
}

// buildHandlers builds the data listener's proxy and the admin listener's handler.
func (s *instance) buildHandlers() error {
	cfg, store, broker, notifier := s.cfg, s.store, s.broker, s.notifier
	s.upstreamTransport = proxy.NewUpstreamTransport(cfg.UpstreamTimeout, cfg.UpstreamMaxConns)
	handler, err := proxy.New(proxy.Options{
		Upstream:         cfg.UpstreamURL,
		Authorizer:       broker,
		Tenants:          broker,
		CompanyHeader:    cfg.CompanyHeader,
		TenantHeader:     cfg.TenantHeader,
		DefaultCompanyID: cfg.DefaultCompanyID,
		ClientTokens:     clientTokens(cfg, s.live.clientTokens.Load()),
		MaxReplayBytes:   cfg.MaxReplayBytes,
		Transport:        s.upstreamTransport,
		Logger:           s.log,
		Metrics:          s.m,
		ReconnectURL:     reconnectHook(store, s.links),
	})
	if err != nil {
		return err
	}
	s.handler = handler
	s.live.clientTokens.OnChange(func(tokens []credentials.Secret) { handler.SetClientTokens(clientTokens(cfg, tokens)) })
	s.adminHandler = admin.New(admin.Options{
		Gatherer: s.reg,
		Checks: []admin.Check{
			{Name: "store", Check: store.Ping},
			{Name: "token writes", Check: func(context.Context) error {
				if n := broker.PendingWrites(); n > 0 {
					return fmt.Errorf("%d rotated refresh token(s) held in memory, store write pending", n)
				}
				return nil
			}},
		},
		Credentials: brokerStatus{store, broker},
		Remover: remover{store, &connect.Disconnector{Store: store, Grants: broker, Upstream: cfg.UpstreamURL,
			Client:         outbound.NewClient(s.upstreamTransport, cfg.UpstreamTimeout),
			OnDisconnected: func(c credentials.Credential) { notifier.Notify(c, events.Disconnected) }}},
		AdminToken:  s.live.adminToken.Load(),
		ConnectLink: s.links.mint(),
		EnablePprof: cfg.EnablePprof,
		Logger:      s.log,
	})
	return nil
}

// bindListeners binds the data, admin and (if on) connect listeners before anything serves,
// so a busy port fails at start, and builds their servers.
func (s *instance) bindListeners() error {
	cfg := s.cfg
	dataLn, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("PLEO_PROXY_LISTEN_ADDR: %w", err)
	}
	adminLn, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		dataLn.Close()
		return fmt.Errorf("PLEO_PROXY_ADMIN_ADDR: %w", err)
	}
	errLog := slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)
	s.dataSrv = proxy.NewServer(s.handler, s.log)
	s.adminSrv = &http.Server{Handler: s.adminHandler, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 60 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10, ErrorLog: errLog}
	s.live.adminToken.OnChange(s.adminHandler.SetAdminToken)
	connectSrv, connectLn, err := newConnectServer(cfg, s.live, s.mock, s.store, s.links, s.log, s.m, s.secrets, errLog, s.notifier)
	if err != nil {
		dataLn.Close()
		adminLn.Close()
		return err
	}
	s.dataLn, s.adminLn, s.connectSrv, s.connectLn = dataLn, adminLn, connectSrv, connectLn
	s.connectAddr = "off"
	if connectLn != nil {
		s.connectAddr = connectLn.Addr().String()
	}
	return nil
}

// start runs the background loops (refresh sweeps, secret file polls, events) and serves the
// listeners, then logs the start (and, under --dev, prints what to try).
func (s *instance) start(ctx context.Context) {
	cfg := s.cfg
	bg, stopBg := context.WithCancel(context.WithoutCancel(ctx))
	s.stopBg = stopBg
	go s.broker.Run(bg, 0)
	go s.secretWatch.Run(bg)
	s.notifierDone = make(chan struct{})
	go func() { s.notifier.Run(bg); close(s.notifierDone) }()

	s.serveErr = make(chan error, 3)
	go func() {
		s.serveErr <- s.dataSrv.Serve(proxy.LimitListener(s.dataLn, cfg.MaxClientConns, s.m))
	}()
	go func() { s.serveErr <- s.adminSrv.Serve(s.adminLn) }()
	if s.connectSrv != nil {
		go func() { s.serveErr <- s.connectSrv.Serve(s.connectLn) }()
	}
	s.log.Info("pleo-auth-proxy started", "version", version, "listen", s.dataLn.Addr().String(),
		"admin", s.adminLn.Addr().String(), "connect", s.connectAddr, "upstream", cfg.UpstreamURL.String(), "store", cfg.RedactedStore(), "dev", s.dev,
		"memory_limit", memoryLimitText(s.memLimit), "memory_limit_from", s.memSource, "max_client_conns", cfg.MaxClientConns)
	if s.mock != nil {
		s.mock.printTry(s.stdout, s.dataLn.Addr().String(), s.adminLn.Addr().String(), s.connectAddr, cfg, s.links)
	}
}

// wait blocks until ctx ends (a signal: nil) or a listener fails (its error).
func (s *instance) wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		s.log.Info("shutting down", "delay", s.cfg.ShutdownDelay, "timeout", s.cfg.ShutdownTimeout)
		return nil
	case err := <-s.serveErr:
		s.log.Error("listener failed", "error", err)
		return err
	}
}

// shutdown stops the sidecar after wait: readiness off first, then keep serving for the
// shutdown delay, then stop accepting and drain, then send queued events, then give up. It
// returns runErr unless it is http.ErrServerClosed.
func (s *instance) shutdown(ctx context.Context, runErr error) error {
	cfg, log := s.cfg, s.log
	s.adminHandler.SetShuttingDown()
	if runErr == nil && cfg.ShutdownDelay > 0 {
		// Answers during the delay close their connection, so that callers' pools hold no
		// idle connection that the drain would close under a request being sent.
		s.dataSrv.SetKeepAlivesEnabled(false)
		if s.connectSrv != nil {
			s.connectSrv.SetKeepAlivesEnabled(false)
		}
		runErr = shutdownDelay(cfg.ShutdownDelay, laterSignals(ctx), s.serveErr, log)
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	s.drain(sctx)
	s.stopBg()
	<-s.notifierDone
	// Send what is still queued (a state change just before the signal), briefly.
	fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
	if err := s.notifier.Flush(fctx); err != nil {
		log.Warn("exiting with events not delivered", "error", err)
	}
	fcancel()
	_ = s.adminSrv.Shutdown(sctx)
	if n := s.broker.PendingWrites(); n > 0 {
		log.Error("exiting with rotated refresh tokens not persisted", "count", n)
	}
	if runErr != nil && !errors.Is(runErr, http.ErrServerClosed) {
		return runErr
	}
	log.Info("stopped")
	return nil
}

// drain stops the data and connect listeners accepting and waits, until sctx ends, for their
// requests in flight; then it closes what is left. The connect listener drains beside the
// data listener: a callback in flight finishes its store write before the store closes.
func (s *instance) drain(sctx context.Context) {
	var draining sync.WaitGroup
	if s.connectSrv != nil {
		draining.Go(func() {
			if err := s.connectSrv.Shutdown(sctx); err != nil {
				s.log.Warn("graceful shutdown of the connect listener timed out; closing connections", "error", err)
				_ = s.connectSrv.Close()
			}
		})
	}
	if err := s.dataSrv.Shutdown(sctx); err != nil {
		s.log.Warn("graceful shutdown timed out; closing connections", "error", err)
		_ = s.dataSrv.Close()
	}
	draining.Wait()
}

// shutdownDelay keeps the listeners serving for delay after the first SIGTERM, readiness
// already failing: in a classic sidecar, Kubernetes signals the app and the sidecar at once,
// and the app may still be finishing its work. A later SIGTERM or SIGINT (hurry) ends the
// delay at once; so does a listener failing, whose error it returns.
func shutdownDelay(delay time.Duration, hurry <-chan os.Signal, serveErr <-chan error, log *slog.Logger) error {
	if delay <= 0 {
		return nil
	}
	log.Info("readiness failing; still serving new requests for the shutdown delay", "delay", delay)
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case sig := <-hurry:
		log.Info("second signal: shutdown delay cut short", "signal", sig.String())
		return nil
	case err := <-serveErr:
		log.Error("listener failed", "error", err)
		return err
	}
}

// newConnectServer binds PLEO_PROXY_CONNECT_ADDR and builds the consent flow's server, or
// returns nils when the address is empty (the flow is off).
func newConnectServer(cfg *config.Config, live *liveSecrets, mock *devPleo, store credentials.Store, links *connectLinks, logger *slog.Logger,
	m *metrics.Metrics, secrets *redact.Set, errLog *log.Logger, notifier *events.Notifier) (*http.Server, net.Listener, error) {
	if cfg.ConnectAddr == "" {
		return nil, nil, nil
	}
	ln, err := net.Listen("tcp", cfg.ConnectAddr)
	if err != nil {
		return nil, nil, fmt.Errorf("PLEO_PROXY_CONNECT_ADDR: %w", err)
	}
	if mock != nil {
		mock.adoptConnectListener(cfg, ln.Addr().String())
	}
	if len(cfg.OAuthScopes) == 0 {
		logger.Warn("PLEO_PROXY_OAUTH_SCOPES is empty: the consent flow asks for no scope")
	}
	if len(cfg.EncryptionKeys) == 0 {
		logger.Info("consent flow states are sealed with a per-process key (no PLEO_PROXY_ENCRYPTION_KEY): " +
			"a flow must end on the replica that started it")
	}
	h, err := connect.New(connect.Options{
		ClientID:           cfg.OAuthClientID,
		ClientSecret:       cfg.OAuthClientSecret,
		ClientSecretSource: live.clientSecret.Load,
		AuthorizeURL:       cfg.OAuthAuthorizeURL,
		TokenURL:           cfg.OAuthTokenURL,
		RedirectURL:        cfg.OAuthRedirectURL,
		Scopes:             cfg.OAuthScopes,
		SuccessURL:         cfg.ConnectSuccessURL,
		Upstream:           cfg.UpstreamURL,
		Store:              store,
		StateKeys:          cfg.EncryptionKeys,
		Links:              links.signer(),
		UnsignedLinks:      cfg.ConnectUnsignedLinks,
		HTTPClient:         outbound.NewClient(proxy.NewUpstreamTransport(cfg.UpstreamTimeout, cfg.UpstreamMaxConns), cfg.TokenTimeout),
		Logger:             logger.With("listener", "connect"),
		Metrics:            m,
		Secrets:            secrets,
		OnConnected:        func(c credentials.Credential) { notifier.Notify(c, events.Connected) },
	})
	if err != nil {
		ln.Close()
		return nil, nil, err
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		// A callback makes two upstream calls (token exchange, installation), each bounded
		// by PLEO_PROXY_TOKEN_TIMEOUT.
		WriteTimeout:   2*cfg.TokenTimeout + 10*time.Second,
		IdleTimeout:    60 * time.Second,
		MaxHeaderBytes: 32 << 10,
		ErrorLog:       errLog,
	}
	return srv, ln, nil
}

// connectLinksOf returns the signer of connect links when the connect listener is on, or nil
// (the listener off, or only unsigned links and no key). It refuses a connect listener with
// neither a key nor PLEO_PROXY_CONNECT_UNSIGNED_LINKS, and warns about unsigned links.
func connectLinksOf(cfg *config.Config, log *slog.Logger) (*connectLinks, error) {
	if cfg.ConnectAddr == "" {
		return nil, nil
	}
	links, err := newLinks(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.ConnectUnsignedLinks {
		log.Warn("PLEO_PROXY_CONNECT_UNSIGNED_LINKS=true: /connect accepts any tenant_id without a signed link; " +
			"only safe behind an ingress that authenticates and authorises /connect itself")
	}
	if links == nil {
		if !cfg.ConnectUnsignedLinks {
			return nil, errNoConnectKey
		}
		return nil, nil
	}
	return &connectLinks{links: links, cfg: cfg}, nil
}

// reconnectHook is the proxy's reconnect_url hook, or nil without signed links.
func reconnectHook(store credentials.Store, links *connectLinks) func(string) string {
	if links == nil {
		return nil
	}
	return reconnectURLs(store, *links)
}

// clientTokens returns the client tokens the data listener requires: tokens (the configured
// ones, as last read), or none on loopback without any.
func clientTokens(cfg *config.Config, tokens []credentials.Secret) []credentials.Secret {
	if cfg.ListenIsLoopback() && len(tokens) == 0 {
		return nil
	}
	return tokens
}

// brokerStatus joins the store's list with the broker's derived states for /credentials.
type brokerStatus struct {
	store  credentials.Store
	broker *credentials.Broker
}

// List reads the credentials without their secrets (credentials.Scan): /credentials shows
// none, so none is read or decrypted for it.
func (b brokerStatus) List(ctx context.Context) ([]credentials.Credential, error) {
	var list []credentials.Credential
	err := credentials.Scan(ctx, b.store, func(c credentials.Credential) bool { list = append(list, c); return true })
	return list, err
}

func (b brokerStatus) StatusOf(c credentials.Credential) credentials.Status {
	return b.broker.StatusOf(c)
}

// sweepLeader is the store's sweep lead when many replicas share it (PostgreSQL), else nil.
func sweepLeader(store credentials.Store) credentials.SweepLeader {
	l, _ := store.(credentials.SweepLeader)
	return l
}

// newNotifier builds the event notifier for PLEO_PROXY_EVENTS_URL, or returns nil (events off).
// Over PostgreSQL, replicas claim each change in the database, so one of them sends it.
func newNotifier(cfg *config.Config, store credentials.Store, links *connectLinks, log *slog.Logger, em *metrics.EventMetrics) (*events.Notifier, error) {
	if cfg.EventsURL == nil {
		return nil, nil
	}
	claimer, _ := store.(events.Claimer)
	n, err := events.New(events.Options{
		URL:          cfg.EventsURL.String(),
		Key:          cfg.EventsKey,
		Claimer:      claimer,
		Logger:       log.With("component", "events"),
		Metrics:      em,
		ReconnectURL: links.eventLink(),
	})
	if err != nil {
		return nil, fmt.Errorf("PLEO_PROXY_EVENTS_URL: %w", err)
	}
	return n, nil
}

// remover serves DELETE /credentials/{company_id}: a local delete, or a disconnect that
// revokes at Pleo first.
type remover struct {
	store        credentials.Store
	disconnector *connect.Disconnector
}

func (r remover) Delete(ctx context.Context, companyID string) error {
	return r.store.Delete(ctx, companyID)
}

func (r remover) Disconnect(ctx context.Context, companyID string, force bool) (bool, error, error) {
	got, err := r.disconnector.Disconnect(ctx, companyID, force)
	return got.Revoked, got.RevokeErr, err
}

// usageHealthcheck is healthcheck's usage.
const usageHealthcheck = "usage: healthcheck\n" +
	"Asks GET /healthz of the admin listener (PLEO_PROXY_ADMIN_ADDR, on 127.0.0.1 when it names no host); exit 0 on 200, 1 otherwise."

// healthcheck asks the admin listener's /healthz, for container health checks.
func healthcheck(ctx context.Context, environ []string) error {
	addr := config.Environ(environ)["PLEO_PROXY_ADMIN_ADDR"]
	if addr == "" {
		addr = ":7381"
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("PLEO_PROXY_ADMIN_ADDR: %w", err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := outbound.NewClient(nil, 0).Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: /healthz answered %s", resp.Status)
	}
	return nil
}
