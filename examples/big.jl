# A large response, streamed: past 256 KiB of output the worker sends what it
# has and keeps going. `?kib=N` sets the size (default 1024 KiB); every line
# is 64 bytes: its number, zero-padded, then dots.
qs = get(ENV, "QUERY_STRING", "")
m = match(r"kib=(\d+)", qs)
kib = m === nothing ? 1024 : parse(Int, m.captures[1])
println("Content-Type: text/plain")
println()
line = '.' ^ 55
for i in 1:(kib * 16)
    println(lpad(i, 8, '0'), line)
end
