//! A pod's status from its containers' states, as kubelet computes it
//! (`getPhase`, `generateAPIPodStatus` and `pkg/kubelet/status`):
//! phase, conditions, addresses and `containerStatuses`.
use k8s_openapi::{
    api::core::v1::{Pod, PodStatus},
    jiff::Timestamp,
};
use serde_json::{Value, json};

/// A container's state (the three of `ContainerState`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        started_at: Option<Timestamp>,
        finished_at: Timestamp,
    },
}

impl CState {
    fn to_json(&self, container_id: Option<&str>) -> Value {
        match self {
            CState::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({"waiting": w})
            }
            CState::Running { started_at } => {
                json!({"running": {"startedAt": started_at.to_string()}})
            }
            CState::Terminated {
                exit_code,
                reason,
                started_at,
                finished_at,
            } => {
                let mut t = json!({"exitCode": exit_code, "reason": reason, "finishedAt": finished_at.to_string()});
                if let Some(s) = started_at {
                    t["startedAt"] = json!(s.to_string());
                }
                if let Some(id) = container_id {
                    t["containerID"] = json!(id);
                }
                if *exit_code > 128 {
                    t["signal"] = json!(exit_code - 128);
                }
                json!({"terminated": t})
            }
        }
    }
}

/// What the status needs of one container.
#[derive(Clone, Debug)]
pub struct ContainerStatusIn {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: Option<String>,
    pub state: CState,
    pub last: Option<CState>,
    pub ready: bool,
    pub started: bool,
    pub restart_count: i32,
}

/// kubelet's `getPhase` for pods without init containers.
pub fn phase(cs: &[ContainerStatusIn], restart_policy: &str) -> &'static str {
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in cs {
        match &c.state {
            CState::Running { .. } => running += 1,
            CState::Terminated { exit_code, .. } => {
                stopped += 1;
                if *exit_code == 0 {
                    succeeded += 1;
                }
            }
            CState::Waiting { .. } => {
                // A container waiting to restart has run before.
                if c.last.is_some() {
                    stopped += 1
                } else {
                    waiting += 1
                }
            }
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped == cs.len() && !cs.is_empty() {
        if restart_policy == "Always" {
            return "Running";
        }
        if succeeded == cs.len() {
            return "Succeeded";
        }
        if restart_policy == "Never" {
            return "Failed";
        }
        // OnFailure: a failed container will restart.
        return if cs
            .iter()
            .all(|c| matches!(c.state, CState::Terminated { exit_code: 0, .. }))
        {
            "Succeeded"
        } else {
            "Running"
        };
    }
    "Pending"
}

fn cond(ty: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> Value {
    let mut c =
        json!({"type": ty, "status": if ok { "True" } else { "False" }, "lastProbeTime": null});
    if !ok {
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        if let Some(m) = message {
            c["message"] = json!(m);
        }
    }
    c
}

/// The status object (without transition times; see
/// [`with_transition_times`]).
pub fn pod_status(
    pod: &Pod,
    cs: &[ContainerStatusIn],
    restart_policy: &str,
    sandbox_ready: bool,
    pod_ip: Option<&str>,
    host_ip: &str,
    start_time: Timestamp,
) -> Value {
    let old_phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    // Terminal phases are sticky.
    let phase = match old_phase {
        Some(p @ ("Succeeded" | "Failed")) => {
            if p == "Succeeded" {
                "Succeeded"
            } else {
                "Failed"
            }
        }
        _ => phase(cs, restart_policy),
    };
    let unready: Vec<&str> = cs
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let ready_reason = if terminal {
        if phase == "Succeeded" {
            "PodCompleted"
        } else {
            "PodFailed"
        }
    } else {
        "ContainersNotReady"
    };
    let msg = (!unready.is_empty())
        .then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let all_ready = unready.is_empty() && !terminal;
    let statuses: Vec<Value> = cs
        .iter()
        .map(|c| {
            let mut s = json!({
                "name": c.name, "image": c.image, "imageID": c.image_id,
                "ready": c.ready, "started": c.started, "restartCount": c.restart_count,
                "state": c.state.to_json(c.container_id.as_deref()),
                "lastState": c.last.as_ref().map_or(json!({}), |l| l.to_json(c.container_id.as_deref())),
            });
            if let Some(id) = &c.container_id {
                s["containerID"] = json!(id);
            }
            s
        })
        .collect();
    let mut st = json!({
        "phase": phase,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": start_time.to_string(),
        "qosClass": "BestEffort",
        "conditions": [
            cond("PodReadyToStartContainers", sandbox_ready, None, None),
            cond("Initialized", true, None, None),
            cond("ContainersReady", all_ready, Some(ready_reason), msg.clone()),
            cond("Ready", all_ready, Some(ready_reason), msg),
            cond("PodScheduled", true, None, None),
        ],
        "containerStatuses": statuses,
    });
    if let Some(ip) = pod_ip {
        st["podIP"] = json!(ip);
        st["podIPs"] = json!([{"ip": ip}]);
    }
    st
}

/// Adds `lastTransitionTime` to each condition: the old one when its
/// status did not change, now otherwise.
pub fn with_transition_times(st: &Value, old: Option<&PodStatus>) -> Value {
    let mut st = st.clone();
    let now = Timestamp::now().to_string();
    if let Some(conds) = st["conditions"].as_array_mut() {
        for c in conds {
            let ty = c["type"].as_str().unwrap_or_default().to_owned();
            let status = c["status"].as_str().unwrap_or_default().to_owned();
            let prev = old
                .and_then(|o| o.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|x| x.type_ == ty))
                .filter(|x| x.status == status)
                .and_then(|x| x.last_transition_time.as_ref())
                .map(|t| t.0.to_string());
            c["lastTransitionTime"] = json!(prev.unwrap_or_else(|| now.clone()));
        }
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(state: CState, last: bool) -> ContainerStatusIn {
        ContainerStatusIn {
            name: "c".into(),
            image: "i".into(),
            image_id: String::new(),
            container_id: None,
            last: last.then(|| CState::Terminated {
                exit_code: 1,
                reason: "Error".into(),
                started_at: None,
                finished_at: Timestamp::now(),
            }),
            state,
            ready: false,
            started: false,
            restart_count: 0,
        }
    }

    #[test]
    fn phases_follow_get_phase() {
        let t = |code| CState::Terminated {
            exit_code: code,
            reason: String::new(),
            started_at: None,
            finished_at: Timestamp::now(),
        };
        let w = CState::Waiting {
            reason: "ContainerCreating".into(),
            message: None,
        };
        let r = CState::Running {
            started_at: Timestamp::now(),
        };
        assert_eq!(phase(&[c(w.clone(), false)], "Always"), "Pending");
        assert_eq!(phase(&[c(w, true)], "Always"), "Running");
        assert_eq!(phase(&[c(r, false)], "Never"), "Running");
        assert_eq!(phase(&[c(t(0), false)], "Never"), "Succeeded");
        assert_eq!(phase(&[c(t(2), false)], "Never"), "Failed");
        assert_eq!(
            phase(&[c(t(0), false), c(t(3), false)], "OnFailure"),
            "Running"
        );
    }

    #[test]
    fn ready_needs_every_container() {
        let pod = Pod::default();
        let mut a = c(
            CState::Running {
                started_at: Timestamp::now(),
            },
            false,
        );
        a.ready = true;
        let mut b = a.clone();
        b.name = "b".into();
        b.ready = false;
        let st = pod_status(
            &pod,
            &[a, b],
            "Always",
            true,
            Some("10.0.0.2"),
            "192.168.0.11",
            Timestamp::now(),
        );
        let ready = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["message"], "containers with unready status: [b]");
        assert_eq!(st["podIPs"][0]["ip"], "10.0.0.2");
    }
}
