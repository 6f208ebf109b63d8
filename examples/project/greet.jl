# A page of the pool project examples/project: `using Greeting` finds the
# local package through the project julia-fcgi runs with (project = …),
# loaded once per worker.
using Greeting

name = get(ENV, "QUERY_STRING", "")
print("Content-Type: text/html; charset=utf-8\r\n\r\n")
println("<p>", greet(replace(name, "+" => " ")), "</p>")
println("<p>Greeting is loaded from ", pathof(Greeting), "</p>")
