/// The kernel's metric families: name, Prometheus type and help text.
///
/// swift-metrics has no help text, so the families modules record through it carry none; a process fills it in
/// from here when it renders its answer (`promtool check metrics` asks for HELP on every family).
public enum KernelMetricFamilies {
    public struct Family: Sendable {
        public let type: String
        public let help: String
    }

    public static let all: [String: Family] = [
        "kernel_http_requests_total": Family(type: "counter", help: "Requests answered, by server_name, location and status (499: the client closed the connection first)."),
        "kernel_http_request_duration_seconds": Family(type: "histogram", help: "Time from a request's routed head to its last response byte, by server_name and location."),
        "kernel_connections_open": Family(type: "gauge", help: "Client connections open, by listener (its address as bound)."),
        "kernel_upstream_peer_up": Family(type: "gauge", help: "Whether the upstream group would send a request to the peer now (1) or not (0: down, failed within fail_timeout, failing health checks); summed across worker processes."),
        "kernel_upstream_peer_failures_total": Family(type: "counter", help: "Attempts at the peer that counted towards its max_fails (errors, timeouts, invalid answers, next_upstream statuses)."),
        "kernel_upstream_retries_total": Family(type: "counter", help: "Requests passed on to another peer of the group after an attempt failed (one per extra attempt)."),
        "kernel_model_queue_depth": Family(type: "gauge", help: "Inference requests of the model queued or running."),
        "kernel_model_batch_size": Family(type: "histogram", help: "Rows of each model run."),
        "kernel_model_queue_duration_seconds": Family(type: "histogram", help: "Time each inference request waited in the model's queue before its batch started."),
        "kernel_model_compute_duration_seconds": Family(type: "histogram", help: "Time of each model run (one observation per run, whatever the number of requests batched in it)."),
        "kernel_model_failures_total": Family(type: "counter", help: "Inference requests that failed: runtime errors, timeouts, queue-full rejections."),
        "kernel_process_resident_memory_bytes": Family(type: "gauge", help: "Resident memory of the process, by worker number (0: the single process of processes: 0)."),
        "kernel_worker_restarts_total": Family(type: "counter", help: "Worker processes started again by the master, by pool and cause (exit, signal, recycle, harakiri)."),
        "kernel_workers": Family(type: "gauge", help: "Worker processes by pool and state."),
        "kernel_listen_queue": Family(type: "gauge", help: "Connections waiting in the listen queue, by listener."),
        "kernel_listen_overflows_total": Family(type: "counter", help: "Connections dropped because the listen queue was full, by listener."),
    ]
}
