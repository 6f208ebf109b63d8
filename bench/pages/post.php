<?php
// POST page for PHP-FPM, the same answer as post.jl: reads the whole request
// body and answers 64 KiB. PHP keeps nothing between requests, so the 64 KiB
// string is made per request (str_repeat: one allocation plus memset).
$body = file_get_contents('php://input');
header('Content-Type: application/octet-stream');
header('X-Body-Len: ' . strlen($body));
echo str_repeat('x', 65536);
