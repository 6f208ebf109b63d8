# CGI pages start fresh on every request, as under `julia counter.jl`: this
# always prints `count: 1`. (See handler.jl for state that persists.)
count = 0
count += 1
println("Content-Type: text/plain")
println()
println("count: ", count)
