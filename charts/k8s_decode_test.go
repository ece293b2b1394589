package charts_test

// Strict decoding of every Kubernetes manifest we hand users: what the chart renders for
// each ci/ values file (standalone, and as a subchart included in a parent chart's
// Deployment), and the plain-YAML examples of docs/kubernetes.md. Each document is turned
// into JSON (sigs.k8s.io/yaml, as kubectl does) and decoded into the Kubernetes API type its
// apiVersion and kind name (k8s.io/api), unknown fields refused: a misspelt field in a
// template or in the docs fails here rather than in a user's `kubectl apply`.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"
)

const kubernetesDoc = "../docs/kubernetes.md"

// The Prometheus Operator's resources are custom resources, not in k8s.io/api. These
// minimal types hold the fields of monitoring.coreos.com/v1 that the chart renders (and a
// few neighbours), so that a misspelt field there is refused too; a field the operator
// accepts but these lack fails the test until it is added here.
type (
	relabelConfig struct {
		SourceLabels []string `json:"sourceLabels,omitempty"`
		Separator    *string  `json:"separator,omitempty"`
		TargetLabel  string   `json:"targetLabel,omitempty"`
		Regex        string   `json:"regex,omitempty"`
		Modulus      uint64   `json:"modulus,omitempty"`
		Replacement  *string  `json:"replacement,omitempty"`
		Action       string   `json:"action,omitempty"`
	}
	scrapeEndpoint struct {
		Port              string                    `json:"port,omitempty"`
		TargetPort        *intstr.IntOrString       `json:"targetPort,omitempty"`
		Path              string                    `json:"path,omitempty"`
		Scheme            string                    `json:"scheme,omitempty"`
		Params            map[string][]string       `json:"params,omitempty"`
		Interval          string                    `json:"interval,omitempty"`
		ScrapeTimeout     string                    `json:"scrapeTimeout,omitempty"`
		HonorLabels       bool                      `json:"honorLabels,omitempty"`
		HonorTimestamps   *bool                     `json:"honorTimestamps,omitempty"`
		Relabelings       []relabelConfig           `json:"relabelings,omitempty"`
		MetricRelabelings []relabelConfig           `json:"metricRelabelings,omitempty"`
		FilterRunning     *bool                     `json:"filterRunning,omitempty"`
		FollowRedirects   *bool                     `json:"followRedirects,omitempty"`
		EnableHTTP2       *bool                     `json:"enableHttp2,omitempty"`
		ProxyURL          *string                   `json:"proxyUrl,omitempty"`
		TLSConfig         *map[string]any           `json:"tlsConfig,omitempty"`
		BearerTokenSecret *corev1.SecretKeySelector `json:"bearerTokenSecret,omitempty"`
	}
	namespaceSelector struct {
		Any        bool     `json:"any,omitempty"`
		MatchNames []string `json:"matchNames,omitempty"`
	}
	podMonitor struct {
		metav1.TypeMeta   `json:",inline"`
		metav1.ObjectMeta `json:"metadata,omitempty"`
		Spec              struct {
			JobLabel            string               `json:"jobLabel,omitempty"`
			PodTargetLabels     []string             `json:"podTargetLabels,omitempty"`
			Selector            metav1.LabelSelector `json:"selector"`
			NamespaceSelector   namespaceSelector    `json:"namespaceSelector,omitempty"`
			PodMetricsEndpoints []scrapeEndpoint     `json:"podMetricsEndpoints,omitempty"`
			SampleLimit         *uint64              `json:"sampleLimit,omitempty"`
		} `json:"spec"`
	}
	serviceMonitor struct {
		metav1.TypeMeta   `json:",inline"`
		metav1.ObjectMeta `json:"metadata,omitempty"`
		Spec              struct {
			JobLabel          string               `json:"jobLabel,omitempty"`
			TargetLabels      []string             `json:"targetLabels,omitempty"`
			PodTargetLabels   []string             `json:"podTargetLabels,omitempty"`
			Selector          metav1.LabelSelector `json:"selector"`
			NamespaceSelector namespaceSelector    `json:"namespaceSelector,omitempty"`
			Endpoints         []scrapeEndpoint     `json:"endpoints"`
			SampleLimit       *uint64              `json:"sampleLimit,omitempty"`
		} `json:"spec"`
	}
	prometheusRule struct {
		metav1.TypeMeta   `json:",inline"`
		metav1.ObjectMeta `json:"metadata,omitempty"`
		Spec              struct {
			Groups []struct {
				Name                    string `json:"name"`
				Interval                string `json:"interval,omitempty"`
				Limit                   *int   `json:"limit,omitempty"`
				PartialResponseStrategy string `json:"partial_response_strategy,omitempty"`
				Rules                   []struct {
					Record        string             `json:"record,omitempty"`
					Alert         string             `json:"alert,omitempty"`
					Expr          intstr.IntOrString `json:"expr"`
					For           string             `json:"for,omitempty"`
					KeepFiringFor string             `json:"keep_firing_for,omitempty"`
					Labels        map[string]string  `json:"labels,omitempty"`
					Annotations   map[string]string  `json:"annotations,omitempty"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
)

// apiTypes maps "apiVersion kind" to a new value of its type. A kind missing here fails the
// test: add it rather than skip it.
var apiTypes = map[string]func() any{
	"v1 ConfigMap":                                    func() any { return &corev1.ConfigMap{} },
	"v1 PersistentVolumeClaim":                        func() any { return &corev1.PersistentVolumeClaim{} },
	"v1 Pod":                                          func() any { return &corev1.Pod{} },
	"v1 Secret":                                       func() any { return &corev1.Secret{} },
	"v1 Service":                                      func() any { return &corev1.Service{} },
	"v1 ServiceAccount":                               func() any { return &corev1.ServiceAccount{} },
	"apps/v1 DaemonSet":                               func() any { return &appsv1.DaemonSet{} },
	"apps/v1 Deployment":                              func() any { return &appsv1.Deployment{} },
	"apps/v1 StatefulSet":                             func() any { return &appsv1.StatefulSet{} },
	"autoscaling/v2 HorizontalPodAutoscaler":          func() any { return &autoscalingv2.HorizontalPodAutoscaler{} },
	"batch/v1 CronJob":                                func() any { return &batchv1.CronJob{} },
	"batch/v1 Job":                                    func() any { return &batchv1.Job{} },
	"networking.k8s.io/v1 Ingress":                    func() any { return &networkingv1.Ingress{} },
	"networking.k8s.io/v1 NetworkPolicy":              func() any { return &networkingv1.NetworkPolicy{} },
	"policy/v1 PodDisruptionBudget":                   func() any { return &policyv1.PodDisruptionBudget{} },
	"rbac.authorization.k8s.io/v1 ClusterRole":        func() any { return &rbacv1.ClusterRole{} },
	"rbac.authorization.k8s.io/v1 ClusterRoleBinding": func() any { return &rbacv1.ClusterRoleBinding{} },
	"rbac.authorization.k8s.io/v1 Role":               func() any { return &rbacv1.Role{} },
	"rbac.authorization.k8s.io/v1 RoleBinding":        func() any { return &rbacv1.RoleBinding{} },
	"monitoring.coreos.com/v1 PodMonitor":             func() any { return &podMonitor{} },
	"monitoring.coreos.com/v1 PrometheusRule":         func() any { return &prometheusRule{} },
	"monitoring.coreos.com/v1 ServiceMonitor":         func() any { return &serviceMonitor{} },
}

// decodeStrictly decodes every YAML document of manifests into its Kubernetes API type,
// refusing unknown and duplicate fields, and returns the "apiVersion kind" of each. source
// names the manifests in failure messages.
func decodeStrictly(t *testing.T, source string, manifests []byte) []string {
	t.Helper()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifests)))
	var kinds []string
	for i := 1; ; i++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: reading YAML document %d: %v", source, i, err)
		}
		js, err := sigsyaml.YAMLToJSONStrict(doc)
		if err != nil {
			t.Errorf("%s, document %d: %v\n%s", source, i, err, doc)
			continue
		}
		if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
			continue // only comments
		}
		var tm metav1.TypeMeta
		if err := json.Unmarshal(js, &tm); err != nil {
			t.Errorf("%s, document %d: not an object: %v\n%s", source, i, err, doc)
			continue
		}
		key := tm.APIVersion + " " + tm.Kind
		name := fmt.Sprintf("%s, document %d (%s)", source, i, key)
		newObj, ok := apiTypes[key]
		if !ok {
			t.Errorf("%s: no Kubernetes API type known for apiVersion %q kind %q; add it to apiTypes", name, tm.APIVersion, tm.Kind)
			continue
		}
		obj := newObj()
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.DisallowUnknownFields()
		if err := dec.Decode(obj); err != nil {
			t.Errorf("%s does not decode strictly into %T: %v\n%s", name, obj, err, doc)
			continue
		}
		if dec.More() {
			t.Errorf("%s: data after the object", name)
		}
		kinds = append(kinds, key)
	}
	return kinds
}

// TestRenderedManifestsDecodeStrictly: every document the chart renders, for every ci/
// values file, standalone and as a subchart in a parent chart's Deployment.
func TestRenderedManifestsDecodeStrictly(t *testing.T) {
	for _, file := range ciValuesFiles(t) {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".yaml"), func(t *testing.T) {
			t.Parallel()
			rendered := mustHelm(t, "template", releaseName, chartDir, "--namespace", releaseNS, "-f", file)
			kinds := decodeStrictly(t, "helm template -f "+file, []byte(rendered))
			parentKinds := decodeStrictly(t, "parent chart with "+file, []byte(renderParent(t, readValues(t, file))))
			// The parent's Deployment holds the sidecar container: it must have been decoded.
			if !slices.Contains(parentKinds, "apps/v1 Deployment") {
				t.Errorf("the parent chart rendered with %s has no Deployment: %v", file, parentKinds)
			}
			if flag(readValues(t, file), "standalone", "enabled") && !slices.Contains(kinds, "apps/v1 Deployment") {
				t.Errorf("standalone values %s rendered no Deployment: %v", file, kinds)
			}
		})
	}
}

// yamlBlocks returns the fenced code blocks of a Markdown file whose info string is
// exactly "yaml", with the line each starts on. Blocks marked "yaml helm" (Helm templates)
// are not plain Kubernetes YAML and are left out on purpose.
func yamlBlocks(t *testing.T, path string) (blocks []string, lines []int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fence := regexp.MustCompile("^ {0,3}(```+)(.*)$")
	var (
		open  string // the opening fence while inside a block
		keep  bool   // the block is plain YAML
		start int
		cur   strings.Builder
	)
	for i, line := range strings.Split(string(b), "\n") {
		m := fence.FindStringSubmatch(line)
		switch {
		case open == "" && m != nil:
			open, keep, start = m[1], strings.TrimSpace(m[2]) == "yaml", i+1
			cur.Reset()
		case open != "" && m != nil && len(m[1]) >= len(open) && strings.TrimSpace(m[2]) == "":
			if keep {
				blocks = append(blocks, cur.String())
				lines = append(lines, start)
			}
			open = ""
		case open != "":
			cur.WriteString(line)
			cur.WriteByte('\n')
		}
	}
	if open != "" {
		t.Fatalf("%s: the code block opened on line %d is not closed", path, start)
	}
	return blocks, lines
}

// TestKubernetesDocYAMLDecodesStrictly: the plain-YAML examples of docs/kubernetes.md.
func TestKubernetesDocYAMLDecodesStrictly(t *testing.T) {
	blocks, lines := yamlBlocks(t, kubernetesDoc)
	var kinds []string
	for i, block := range blocks {
		kinds = append(kinds, decodeStrictly(t, fmt.Sprintf("%s:%d", kubernetesDoc, lines[i]), []byte(block))...)
	}
	// The examples the page promises; losing one (or its fence) must not pass silently.
	for _, want := range []string{"apps/v1 Deployment", "v1 PersistentVolumeClaim", "batch/v1 CronJob"} {
		if !slices.Contains(kinds, want) {
			t.Errorf("%s: no %s in its yaml blocks (found %v)", kubernetesDoc, want, kinds)
		}
	}
}
