"""The console's JSON: models with their tasks and VRAM, nodes with stake, specialisations, heartbeats and
reputation, jobs with per-task status, verification outcome and payments. Amounts are integer lamports."""

from __future__ import annotations

import time
from typing import Any

from splitup.gateway.service import GatewayService
from splitup.market.accounts import node_endpoint, node_engines, node_specialized, node_version
from splitup.market.constants import TaskStatus
from splitup.market.market import heartbeat_fresh
from splitup.sdk.reports import FINAL_TASK, job_report


def overview(svc: GatewayService) -> dict[str, Any]:
    s = svc.snapshot()
    c = s.config
    live = [j for j in svc.jobs.values() if j.state in ("running", "settling", "failed")]
    return {
        "slot": s.slot,
        "wallet": str(svc.client.payer.pubkey()),
        "balance": svc.client.market.t.balance(svc.client.payer.pubkey()),
        "config": {"verify_rate_bps": c.verify_rate_bps, "min_stake": c.min_stake,
                   "task_collateral": c.task_collateral, "slash_bps": c.slash_bps,
                   "validator_reward": c.validator_reward, "protocol_fee_bps": c.protocol_fee_bps,
                   "treasury": c.treasury, "authority": str(c.authority)},
        "counts": {"models": len(s.models), "nodes": len(s.nodes), "jobs_on_chain": len(s.jobs),
                   "jobs_live": len(live), "jobs_done": sum(j.state == "closed" for j in svc.jobs.values()),
                   "jobs_wound_up": sum(j.state == "wound_up" for j in svc.jobs.values())},
        "admission": {"running": svc.admission.running, "queued": svc.admission.waiting,
                      "max_running": svc.admission.max_running, "max_queue": svc.admission.max_queue,
                      **svc.admission.stats},
    }


def _task_labels(svc: GatewayService) -> dict[str, dict[str, Any]]:
    return {t.task_id: {"model": e.name, "index": t.index} for e in svc.snapshot().models for t in e.plan.tasks}


def models(svc: GatewayService) -> list[dict[str, Any]]:
    s = svc.snapshot()
    holders: dict[bytes, list[str]] = {}
    for address, n in s.nodes:
        for tid in node_specialized(n):
            holders.setdefault(bytes(tid), []).append(str(address))
    out = []
    for e in s.models:
        tasks = []
        for t, chain in zip(e.plan.tasks, e.info.tasks, strict=True):
            tasks.append({"index": t.index, "task_id": t.task_id, "vram_bytes": t.vram_bytes,
                          "weight_bytes": t.weight_bytes, "kv_cache_bytes": t.kv_cache_bytes, "flops": t.flops,
                          "layers": t.layers, "price": chain.price, "holders": holders.get(bytes(chain.task_id), [])})
        out.append({"name": e.name, "address": str(e.address), "kind": e.manifest.kind,
                    "description": e.manifest.description, "tasks": tasks,
                    "vram_bytes": sum(t.vram_bytes for t in e.plan.tasks),
                    "weight_bytes": e.plan.total_weight_bytes, "owner": str(e.info.header.owner)})
    return out


def nodes(svc: GatewayService) -> list[dict[str, Any]]:
    s = svc.snapshot()
    labels = _task_labels(svc)
    now = time.time()
    out = []
    for address, n in sorted(s.nodes, key=lambda kv: str(kv[0])):
        url = node_endpoint(n)
        beat = svc.heartbeats.get(url)
        status = beat["status"] if beat else {}
        age = now - beat["received"] if beat else None
        specs = []
        for tid in node_specialized(n):
            label = labels.get(bytes(tid).hex(), {})
            specs.append({"task_id": bytes(tid).hex(), "model": label.get("model"), "index": label.get("index")})
        out.append({
            "address": str(address), "owner": str(n.owner), "endpoint": url, "name": status.get("node"),
            "stake": n.stake, "locked": n.locked, "unbonding": n.unbonding, "vram": n.vram, "engines": n.engines,
            "reputation": {"tasks_done": n.tasks_done, "verified": n.verified, "failed": n.failed,
                           "ever_failed": bool(n.ever_failed)},
            "specialized": specs,
            "heartbeat": {"alive": age is not None and age < 3 * svc.heartbeat_s + 2,
                          "age_s": None if age is None else round(age, 1), "uptime_s": status.get("uptime_s"),
                          "hops_done": status.get("hops_done"), "sessions": status.get("sessions")},
            # what routing goes by: the node's last HEARTBEAT on chain against the config's window
            "chain_heartbeat": {"slot": n.last_heartbeat, "age_slots": max(0, s.slot - n.last_heartbeat),
                                "window_slots": s.config.heartbeat_window_slots,
                                "fresh": heartbeat_fresh(n, s.config, s.slot), "free_sessions": n.free_sessions,
                                "engines": node_engines(n), "version": node_version(n)},
        })
    return out


def jobs(svc: GatewayService) -> list[dict[str, Any]]:
    s = svc.snapshot()
    names = {str(e.address): e for e in s.models}
    node_names = {str(a): node_endpoint(n) for a, n in s.nodes}
    rows: dict[str, dict[str, Any]] = {}
    for address, info in s.jobs:
        entry = names.get(str(info.header.model))
        report = job_report(address, info, s.config, entry.name if entry else "?", entry.task_ids() if entry else [])
        done = all(TaskStatus[t.status] in FINAL_TASK for t in report.tasks)
        rows[str(address)] = {**report.to_json(), "state": "settled" if done else "on chain", "source": "chain"}
    for j in list(svc.jobs.values()):
        if j.report is not None:  # closed: the report taken before closing is final (a snapshot may lag)
            body = j.report.to_json()
        else:
            body = rows.get(j.address) or {"address": j.address, "model": j.model, "tasks": []}
        body.update({"state": j.state, "created": j.created,
                     "prompt": j.prompt, "kind": j.kind, "tokens": j.tokens, "seconds": round(j.seconds, 3),
                     "tokens_per_s": round(j.tokens / j.seconds, 2) if j.seconds else None, "error": j.error,
                     "source": "gateway"})
        rows[j.address] = body
    for body in rows.values():
        for t in body.get("tasks", []):
            t["node_endpoint"] = node_names.get(t.get("node") or "")
            t["validator_endpoint"] = node_names.get(t.get("validator") or "")
    return sorted(rows.values(), key=lambda r: -(r.get("created") or 0))
