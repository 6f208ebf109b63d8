# A page written for plain CGI: it would run unchanged as `julia cgi_env.jl`
# under any CGI server. Prints the request's environment (ENV holds exactly
# the FastCGI params) sorted by name, then echoes the request body.
println("Content-Type: text/plain; charset=utf-8")
println()
for name in sort(collect(keys(ENV)))
    println(name, "=", ENV[name])
end
println("--- stdin ---")
print(read(stdin, String))
