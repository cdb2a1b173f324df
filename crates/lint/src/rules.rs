//! The rule table: ids, names, levels, why and the default fix.

use serde::Serialize;

/// How bad a finding is. Errors make `gatehouse lint` exit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Traffic is broken or wider open than written.
    Error,
    /// Likely a mistake; traffic may still flow as intended.
    Warning,
}

impl Level {
    /// `error` or `warning`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
        }
    }
}

/// A rule's fixed description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleInfo {
    /// Id (`GH001`).
    pub id: &'static str,
    /// Short name.
    pub name: &'static str,
    /// Level.
    pub level: Level,
    /// Why it matters.
    pub why: &'static str,
    /// How to fix it.
    pub fix: &'static str,
}

/// Every rule.
pub const RULES: &[RuleInfo] = &[
    RuleInfo {
        id: "GH000",
        name: "unreadable-manifest",
        level: Level::Error,
        why: "a file that is not valid YAML is skipped by every other rule (and refused by kubectl)",
        fix: "fix the YAML at the reported line",
    },
    RuleInfo {
        id: "GH001",
        name: "tailscale-expose-with-kube-proxy-replacement",
        level: Level::Error,
        why: "Cilium's eBPF kube-proxy replacement translates Service addresses at the socket, so the L4 proxy behind `tailscale.com/expose` sees asymmetric routing and connections hang",
        fix: "expose the Service through an Ingress with ingressClassName: tailscale (L7) instead of the annotation, or set socketLB.hostNamespaceOnly=true in Cilium",
    },
    RuleInfo {
        id: "GH002",
        name: "policy-uses-service-port",
        level: Level::Error,
        why: "network policies match the pod's container port after Service translation; a rule on the Service port never matches and the traffic is dropped",
        fix: "use the container port (the Service's targetPort) in the policy",
    },
    RuleInfo {
        id: "GH003",
        name: "proxy-namespace-cannot-reach-backend",
        level: Level::Error,
        why: "the mesh proxy pods run in the proxy namespace; a backend whose policies do not admit them is silently unreachable from the mesh",
        fix: "add an ingress rule from the proxy namespace (Cilium: fromEndpoints with k8s:io.kubernetes.pod.namespace) on the container port",
    },
    RuleInfo {
        id: "GH004",
        name: "public-backend-unreachable-from-connector",
        level: Level::Error,
        why: "cloudflared forwards each public hostname to its Service; if the connector's egress policy (or the backend's ingress policy) does not admit it, the public URL fails with 502",
        fix: "add a toEndpoints rule for the backend to the connector's egress policy and a rule from the connector to the backend's policy, on the container port",
    },
    RuleInfo {
        id: "GH005",
        name: "tunnel-rules-without-final-catch-all",
        level: Level::Error,
        why: "cloudflared refuses ingress rules whose last rule matches only some requests, or that have a catch-all anywhere but last",
        fix: "end the ingress list with exactly one rule without hostname and path, e.g. `- service: http_status:404`",
    },
    RuleInfo {
        id: "GH006",
        name: "proxy-namespace-not-privileged",
        level: Level::Error,
        why: "L3 proxies (tailscale.com/expose, LoadBalancer class tailscale, egress Services, Connectors) need CAP_NET_ADMIN; under the baseline or restricted Pod Security level their pods are refused",
        fix: "label the namespace pod-security.kubernetes.io/enforce: privileged",
    },
    RuleInfo {
        id: "GH007",
        name: "cilium-port-not-a-string",
        level: Level::Error,
        why: "CiliumNetworkPolicy ports are strings; an integer is refused by strict validation and, where coerced or dropped, the rule no longer means what it says",
        fix: "quote the port: port: \"8080\"",
    },
    RuleInfo {
        id: "GH008",
        name: "cilium-unknown-key",
        level: Level::Error,
        why: "the API server drops unknown keys of CiliumNetworkPolicy silently; a misspelt `toPorts` leaves a rule without port restriction, which allows every port",
        fix: "use the key the schema defines (see the suggestion), and apply with --validate=strict",
    },
    RuleInfo {
        id: "GH009",
        name: "talos-dns-forwarding-with-bpf-host-routing",
        level: Level::Error,
        why: "Talos forwards kube-dns to the host DNS (forwardKubeDNSToHost, on by default since 1.8); with Cilium's eBPF host routing those packets are lost and cluster DNS fails",
        fix: "set bpf.hostLegacyRouting=true in Cilium's values (enable-host-legacy-routing: \"true\" in cilium-config), or disable forwardKubeDNSToHost",
    },
    RuleInfo {
        id: "GH010",
        name: "tunnel-path-not-anchored",
        level: Level::Warning,
        why: "cloudflared matches `path` as an unanchored regular expression: `/admin` also matches `/x/admin` and `/administrator`",
        fix: "anchor the expression: ^/admin(/|$)",
    },
];

/// The rule with id `id` (GH000's entry for an id that does not exist; the
/// fixture test covers every id the rules use).
pub fn rule(id: &str) -> RuleInfo {
    RULES
        .iter()
        .copied()
        .find(|r| r.id == id)
        .unwrap_or(RULES[0])
}
