//! Executor keys of the executors that later issues implement (Kubernetes in issue 6; EC2 has no
//! issue yet). They are parsed and typed now, with Quay's names, so those issues add behaviour
//! only; defaults are applied by the executor that uses them, as Quay does.

use std::path::PathBuf;

use super::reader::{Ctx, MapReader};
use super::values::Secret;

/// Keys of the worker image that Quay's VM executors (`kubernetes`, `ec2`) boot.
pub(super) const WORKER_KEYS: &[&str] = &[
    "QUAY_USERNAME",
    "QUAY_PASSWORD",
    "WORKER_IMAGE",
    "WORKER_TAG",
];

/// Keys of the `kubernetes` and `kubernetesPodman` executors.
pub(super) const KUBERNETES_KEYS: &[&str] = &[
    "BUILDER_NAMESPACE",
    "K8S_API_SERVER",
    "K8S_API_TLS_CERT",
    "K8S_API_TLS_KEY",
    "K8S_API_TLS_CA",
    "K8S_API_TIMEOUT",
    "SERVICE_ACCOUNT_NAME",
    "SERVICE_ACCOUNT_TOKEN",
    "KUBERNETES_DISTRIBUTION",
    "CONTAINER_MEMORY_LIMITS",
    "CONTAINER_CPU_LIMITS",
    "CONTAINER_MEMORY_REQUEST",
    "CONTAINER_CPU_REQUEST",
    "NODE_SELECTOR_LABEL_KEY",
    "NODE_SELECTOR_LABEL_VALUE",
    "BUILDER_VM_CONTAINER_IMAGE",
    "BUILDER_CONTAINER_IMAGE",
    "IMAGE_PULL_SECRET_NAME",
    "IMAGE_PULL_POLICY",
    "DNS_POLICY",
    "MAXIMUM_JOB_TIME",
    "RETENTION_AFTER_FINISHED",
    "VM_MEMORY_LIMIT",
];

/// Keys of the `ec2` executor.
pub(super) const EC2_KEYS: &[&str] = &[
    "EC2_REGION",
    "AWS_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "EC2_INSTANCE_TYPE",
    "EC2_KEY_NAME",
    "EC2_VPC_SUBNET_ID",
    "EC2_SECURITY_GROUP_IDS",
    "COREOS_AMI",
    "COREOS_CHANNEL",
    "BLOCK_DEVICE_SIZE",
];

/// The worker image a VM executor runs, and the login to pull it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerSettings {
    /// `QUAY_USERNAME`: registry login for pulling the worker image.
    pub quay_username: Option<String>,
    /// `QUAY_PASSWORD`.
    pub quay_password: Option<Secret>,
    /// `WORKER_IMAGE` (Quay: `quay.io/coreos/registry-build-worker`).
    pub worker_image: Option<String>,
    /// `WORKER_TAG` (required on Quay's Ignition path).
    pub worker_tag: Option<String>,
}

impl WorkerSettings {
    pub(super) fn parse(r: &mut MapReader<'_>, ctx: &mut Ctx) -> WorkerSettings {
        WorkerSettings {
            quay_username: r.string(ctx, "QUAY_USERNAME"),
            quay_password: r.secret(ctx, "QUAY_PASSWORD"),
            worker_image: r.string(ctx, "WORKER_IMAGE"),
            worker_tag: r.string(ctx, "WORKER_TAG"),
        }
    }
}

/// `kubernetes` / `kubernetesPodman` settings (reference 3.2 and 3.3; defaults in brackets there).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubernetesSettings {
    /// `BUILDER_NAMESPACE` (default: builder).
    pub builder_namespace: Option<String>,
    /// `K8S_API_SERVER` (default: localhost:8080): host:port of the API server.
    pub api_server: Option<String>,
    /// `K8S_API_TLS_CERT`: client certificate path.
    pub api_tls_cert: Option<PathBuf>,
    /// `K8S_API_TLS_KEY`: client key path.
    pub api_tls_key: Option<PathBuf>,
    /// `K8S_API_TLS_CA`: CA bundle path for the API server.
    pub api_tls_ca: Option<PathBuf>,
    /// `K8S_API_TIMEOUT` (default: 20) seconds.
    pub api_timeout_s: Option<u64>,
    /// `SERVICE_ACCOUNT_NAME` (default: quay-builder-sa).
    pub service_account_name: Option<String>,
    /// `SERVICE_ACCOUNT_TOKEN`: bearer token for the API server.
    pub service_account_token: Option<Secret>,
    /// `KUBERNETES_DISTRIBUTION` (default: basic): `basic`, `k8s` or `openshift`.
    pub distribution: Option<&'static str>,
    /// `CONTAINER_MEMORY_LIMITS` (default: 5120Mi).
    pub container_memory_limits: Option<String>,
    /// `CONTAINER_CPU_LIMITS` (default: 1000m).
    pub container_cpu_limits: Option<String>,
    /// `CONTAINER_MEMORY_REQUEST` (default: 3968Mi).
    pub container_memory_request: Option<String>,
    /// `CONTAINER_CPU_REQUEST` (default: 500m).
    pub container_cpu_request: Option<String>,
    /// `NODE_SELECTOR_LABEL_KEY` (default: beta.kubernetes.io/instance-type).
    pub node_selector_label_key: Option<String>,
    /// `NODE_SELECTOR_LABEL_VALUE`: no node selector when empty.
    pub node_selector_label_value: Option<String>,
    /// `BUILDER_VM_CONTAINER_IMAGE`: the VM launcher image (`kubernetes`).
    pub builder_vm_container_image: Option<String>,
    /// `BUILDER_CONTAINER_IMAGE`: the podman builder image (`kubernetesPodman`).
    pub builder_container_image: Option<String>,
    /// `IMAGE_PULL_SECRET_NAME` (default: builder).
    pub image_pull_secret_name: Option<String>,
    /// `IMAGE_PULL_POLICY` (default: Always).
    pub image_pull_policy: Option<&'static str>,
    /// `DNS_POLICY` (default: Default).
    pub dns_policy: Option<&'static str>,
    /// `MAXIMUM_JOB_TIME` (default: 7200) seconds: the Job's `activeDeadlineSeconds`.
    pub maximum_job_time_s: Option<u64>,
    /// `RETENTION_AFTER_FINISHED` (default: 120) seconds: `ttlSecondsAfterFinished`.
    pub retention_after_finished_s: Option<u64>,
    /// `VM_MEMORY_LIMIT` (default: 4G): memory of the builder VM.
    pub vm_memory_limit: Option<String>,
}

impl KubernetesSettings {
    pub(super) fn parse(r: &mut MapReader<'_>, ctx: &mut Ctx) -> KubernetesSettings {
        KubernetesSettings {
            builder_namespace: r.string(ctx, "BUILDER_NAMESPACE"),
            api_server: r.string(ctx, "K8S_API_SERVER"),
            api_tls_cert: r.string(ctx, "K8S_API_TLS_CERT").map(PathBuf::from),
            api_tls_key: r.string(ctx, "K8S_API_TLS_KEY").map(PathBuf::from),
            api_tls_ca: r.string(ctx, "K8S_API_TLS_CA").map(PathBuf::from),
            api_timeout_s: r.seconds(ctx, "K8S_API_TIMEOUT", 1),
            service_account_name: r.string(ctx, "SERVICE_ACCOUNT_NAME"),
            service_account_token: r.secret(ctx, "SERVICE_ACCOUNT_TOKEN"),
            distribution: r.one_of(
                ctx,
                "KUBERNETES_DISTRIBUTION",
                &["basic", "k8s", "openshift"],
            ),
            container_memory_limits: r.string(ctx, "CONTAINER_MEMORY_LIMITS"),
            container_cpu_limits: r.string(ctx, "CONTAINER_CPU_LIMITS"),
            container_memory_request: r.string(ctx, "CONTAINER_MEMORY_REQUEST"),
            container_cpu_request: r.string(ctx, "CONTAINER_CPU_REQUEST"),
            node_selector_label_key: r.string(ctx, "NODE_SELECTOR_LABEL_KEY"),
            node_selector_label_value: r.string(ctx, "NODE_SELECTOR_LABEL_VALUE"),
            builder_vm_container_image: r.string(ctx, "BUILDER_VM_CONTAINER_IMAGE"),
            builder_container_image: r.string(ctx, "BUILDER_CONTAINER_IMAGE"),
            image_pull_secret_name: r.string(ctx, "IMAGE_PULL_SECRET_NAME"),
            image_pull_policy: r.one_of(
                ctx,
                "IMAGE_PULL_POLICY",
                &["Always", "IfNotPresent", "Never"],
            ),
            dns_policy: r.one_of(
                ctx,
                "DNS_POLICY",
                &["Default", "ClusterFirst", "ClusterFirstWithHostNet", "None"],
            ),
            maximum_job_time_s: r.seconds(ctx, "MAXIMUM_JOB_TIME", 1),
            retention_after_finished_s: r.seconds(ctx, "RETENTION_AFTER_FINISHED", 0),
            vm_memory_limit: r.string(ctx, "VM_MEMORY_LIMIT"),
        }
    }
}

/// `ec2` settings (reference 3.6).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ec2Settings {
    /// `EC2_REGION` (required by Quay).
    pub region: Option<String>,
    /// `AWS_ACCESS_KEY`.
    pub aws_access_key: Option<String>,
    /// `AWS_SECRET_KEY`.
    pub aws_secret_key: Option<Secret>,
    /// `EC2_INSTANCE_TYPE` (required by Quay).
    pub instance_type: Option<String>,
    /// `EC2_KEY_NAME`.
    pub key_name: Option<String>,
    /// `EC2_VPC_SUBNET_ID`.
    pub vpc_subnet_id: Option<String>,
    /// `EC2_SECURITY_GROUP_IDS`.
    pub security_group_ids: Option<Vec<String>>,
    /// `COREOS_AMI`: otherwise looked up from the Fedora CoreOS stream.
    pub coreos_ami: Option<String>,
    /// `COREOS_CHANNEL` (default: stable).
    pub coreos_channel: Option<String>,
    /// `BLOCK_DEVICE_SIZE` (default: 48) in GB.
    pub block_device_size_gb: Option<u64>,
}

impl Ec2Settings {
    pub(super) fn parse(r: &mut MapReader<'_>, ctx: &mut Ctx) -> Ec2Settings {
        Ec2Settings {
            region: r.string(ctx, "EC2_REGION"),
            aws_access_key: r.string(ctx, "AWS_ACCESS_KEY"),
            aws_secret_key: r.secret(ctx, "AWS_SECRET_KEY"),
            instance_type: r.string(ctx, "EC2_INSTANCE_TYPE"),
            key_name: r.string(ctx, "EC2_KEY_NAME"),
            vpc_subnet_id: r.string(ctx, "EC2_VPC_SUBNET_ID"),
            security_group_ids: r.strings(ctx, "EC2_SECURITY_GROUP_IDS"),
            coreos_ami: r.string(ctx, "COREOS_AMI"),
            coreos_channel: r.string(ctx, "COREOS_CHANNEL"),
            block_device_size_gb: r.uint(
                ctx,
                "BLOCK_DEVICE_SIZE",
                1..=65_536,
                "a whole number of gigabytes, at least 1",
            ),
        }
    }
}
