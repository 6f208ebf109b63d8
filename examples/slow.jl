# Sleeps `?s=N` seconds (default 1, at most 600) before answering: for
# request-timeout and slow-request tests of the master.
m = match(r"s=([0-9.]+)", get(ENV, "QUERY_STRING", ""))
secs = min(m === nothing ? 1.0 : parse(Float64, m.captures[1]), 600.0)
sleep(secs)
println("Content-Type: text/plain")
println()
println("slept ", secs)
