package config

import (
	"bytes"
	"encoding/base64"
	"maps"
	"reflect"
	"strings"
	"testing"
)

// connectEnv turns the consent flow on, with everything it needs but a link key.
func connectEnv(extra map[string]string) map[string]string {
	env := map[string]string{
		"PLEO_PROXY_CONNECT_ADDR":        "127.0.0.1:7382",
		"PLEO_PROXY_OAUTH_CLIENT_ID":     "client",
		"PLEO_PROXY_OAUTH_CLIENT_SECRET": "secret",
		"PLEO_PROXY_OAUTH_REDIRECT_URL":  "https://connect.example.com/callback",
	}
	maps.Copy(env, extra)
	return env
}

func TestConnectKeys(t *testing.T) {
	long := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{5}, 48))
	for _, tc := range []struct {
		name     string
		environ  map[string]string
		keys     [][]byte
		unsigned bool
	}{
		{"one key", connectEnv(map[string]string{"PLEO_PROXY_CONNECT_KEY": key(1)}), [][]byte{bytes.Repeat([]byte{1}, 32)}, false},
		{"rotation, longer key", connectEnv(map[string]string{"PLEO_PROXY_CONNECT_KEY": long + ", " + key(1)}),
			[][]byte{bytes.Repeat([]byte{5}, 48), bytes.Repeat([]byte{1}, 32)}, false},
		{"file", connectEnv(map[string]string{"PLEO_PROXY_CONNECT_KEY_FILE": writeFile(t, "ck", key(2)+"\n"+key(3)+"\n")}),
			[][]byte{bytes.Repeat([]byte{2}, 32), bytes.Repeat([]byte{3}, 32)}, false},
		{"derived from the encryption key", connectEnv(map[string]string{"PLEO_PROXY_ENCRYPTION_KEY": key(4)}), nil, false},
		{"unsigned links", connectEnv(map[string]string{"PLEO_PROXY_CONNECT_UNSIGNED_LINKS": "true"}), nil, true},
		{"no connect listener, no key", map[string]string{}, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse(tc.environ)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(cfg.ConnectKeys, tc.keys) || cfg.ConnectUnsignedLinks != tc.unsigned {
				t.Fatalf("keys %x unsigned %v", cfg.ConnectKeys, cfg.ConnectUnsignedLinks)
			}
		})
	}
}

func TestConnectKeyProblems(t *testing.T) {
	short := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 31))
	for _, tc := range []struct {
		name     string
		environ  map[string]string
		variable string
		want     string
	}{
		{"connect listener without any key", connectEnv(nil), "PLEO_PROXY_CONNECT_KEY", "is required when PLEO_PROXY_CONNECT_ADDR is set"},
		{"short key", connectEnv(map[string]string{"PLEO_PROXY_CONNECT_KEY": short}), "PLEO_PROXY_CONNECT_KEY", "decodes to 31 bytes, want at least 32"},
		{"not base64", connectEnv(map[string]string{"PLEO_PROXY_CONNECT_KEY": "not*base64!"}), "PLEO_PROXY_CONNECT_KEY", "not standard base64"},
		{"second key bad", map[string]string{"PLEO_PROXY_CONNECT_KEY": key(1) + "," + short}, "PLEO_PROXY_CONNECT_KEY", "key 2 of 2"},
		{"set but empty", map[string]string{"PLEO_PROXY_CONNECT_KEY": ""}, "PLEO_PROXY_CONNECT_KEY", "set but empty"},
		{"file set but empty", map[string]string{"PLEO_PROXY_CONNECT_KEY_FILE": ""}, "PLEO_PROXY_CONNECT_KEY_FILE", "set but empty"},
		{"white space only", map[string]string{"PLEO_PROXY_CONNECT_KEY": " , "}, "PLEO_PROXY_CONNECT_KEY", "holds no key"},
		{"both", map[string]string{"PLEO_PROXY_CONNECT_KEY": key(1), "PLEO_PROXY_CONNECT_KEY_FILE": writeFile(t, "k", key(1))},
			"PLEO_PROXY_CONNECT_KEY", "set one of them"},
		{"unsigned not a bool", map[string]string{"PLEO_PROXY_CONNECT_UNSIGNED_LINKS": "yes please"}, "PLEO_PROXY_CONNECT_UNSIGNED_LINKS", "not true or false"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs, lines := problems(t, tc.environ)
			found := false
			for _, p := range *errs {
				if p.Variable == tc.variable && strings.Contains(p.Message, tc.want) {
					found = true
				}
			}
			if !found {
				t.Fatalf("no %s problem with %q:\n%s", tc.variable, tc.want, strings.Join(lines, "\n"))
			}
			if strings.Contains(strings.Join(lines, "\n"), key(1)) {
				t.Fatal("a problem quotes the key")
			}
		})
	}
}
