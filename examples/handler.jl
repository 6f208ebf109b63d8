# Handler style: the top level runs once, when the page is first loaded (and
# again after it is edited); only `handle()` runs per request. Use it for
# expensive setup and for state that should outlive a request.

# Expensive setup, done once: a sieve of Eratosthenes.
function sieve(n)
    composite = falses(n)
    primes = Int[]
    for i in 2:n
        composite[i] && continue
        push!(primes, i)
        for j in i*i:i:n
            composite[j] = true
        end
    end
    return primes
end

const PRIMES = sieve(1_000_000)
const HITS = Ref(0)

# Printed while loading: goes to the worker's log, not to a response.
println("handler.jl loaded: ", length(PRIMES), " primes")

function handle()
    HITS[] += 1
    println("Content-Type: text/plain")
    println()
    println("hits: ", HITS[])
    println("primes below 1000000: ", length(PRIMES))
end
