# The smallest page: CGI style, headers, a blank line, then the body.
println("Content-Type: text/plain")
println()
println("Hello, world!")
