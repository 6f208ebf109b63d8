# Pages can include helper files, relative to the page's directory.
include("lib/greeting.jl")
name = get(ENV, "QUERY_STRING", "")
println("Content-Type: text/plain")
println()
println(greeting(isempty(name) ? "world" : name))
