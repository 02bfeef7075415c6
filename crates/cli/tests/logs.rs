//! The device plugin's log: plain text without colour codes when stderr is not a terminal,
//! JSON lines with `--log-format json`, and `--pod-resources-socket ""` turning the pod
//! resources lookup off, as documented.

use crate::plugin::{Daemon, FakeKubelet, PluginNode, runtime};

#[test]
fn plugin_logs_no_colour_codes_when_stderr_is_not_a_terminal() {
    let node = PluginNode::new();
    // The Daemon harness reads the plugin's stderr through a pipe.
    let plugin = node.start(&[]);
    plugin.wait_for_log("advertising gpuslice.dev/gpu");
    let log = plugin.log();
    assert!(
        !log.contains('\x1b'),
        "escape codes in a piped log:\n{log:?}"
    );
    assert!(log.contains(" INFO "), "{log}");
}

#[test]
fn plugin_logs_json_lines_and_an_empty_pod_resources_socket_turns_the_lookup_off() {
    let node = PluginNode::new();
    let mut command = node.node.gpuslice(&["device-plugin"]);
    command
        .env("FAKECUDA_DEVICES", &node.devices)
        .arg("--kubelet-dir")
        .arg(&node.kubelet_dir)
        .arg("--cdi-dir")
        .arg(&node.cdi_dir)
        .arg("--dir")
        .arg(node.node.dir.ledger_dir())
        .arg("--shim")
        .arg(&node.node.shim)
        .args(["--health-interval-ms", "100"])
        .args(["--pod-resources-socket", ""])
        .args(["--log-format", "json"]);
    let plugin = Daemon::spawn(command);
    runtime().block_on(async {
        let mut kubelet = FakeKubelet::start(&node.kubelet_dir).await;
        let registration = kubelet.registration().await;
        assert_eq!(registration.resource_name, "gpuslice.dev/gpu");
    });
    plugin.wait_for_log("advertising gpuslice.dev/gpu");
    let log = plugin.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect();
    let advertising = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("advertising"))
        })
        .unwrap_or_else(|| panic!("no advertising line in\n{log}"));
    assert_eq!(advertising["level"], "INFO", "{advertising}");
    assert!(advertising["timestamp"].is_string(), "{advertising}");
    // Without the lookup there is nothing to fail to reach.
    assert!(!log.contains("pod resources"), "{log}");
}
