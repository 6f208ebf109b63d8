-- wrk script for the POST workload: every request sends a 4 KiB body.
wrk.method = "POST"
wrk.body = string.rep("a", 4096)
wrk.headers["Content-Type"] = "application/octet-stream"
