<?php
// Front controller for the legacy shop, run with PHP's built-in server:
//
//     php -S 127.0.0.1:8081 demo/legacy/router.php
//
// or under PHP-FPM (demo/run --fpm) with this file as fallthrough's `frontController`:
// it runs for every URL that names no script, and the .php URLs it serves have a file
// each (about.php, ...) that runs it. It never asks `php -S` to serve a file itself
// (it returns true, never false), so it behaves the same under both.
//
// Every request comes through here. Pages this site still owns are listed
// below; anything else answers a real 404, which is what tells fallthrough
// to ask the new Python app instead.
declare(strict_types=1);

// What pages/ and lib/ check: run by their own URL instead (PHP-FPM), they answer 404.
define('LEGACY_ROUTER', true);

require __DIR__ . '/lib/layout.php';
require __DIR__ . '/lib/catalogue.php';

header('X-Served-By: legacy-php');

$path = parse_url($_SERVER['REQUEST_URI'] ?? '/', PHP_URL_PATH) ?: '/';

$pages = [
    '/'            => 'home.php',
    '/index.php'   => 'home.php',
    '/about.php'   => 'about.php',
    '/contact.php' => 'contact.php',
    '/news.php'    => 'news.php',
    '/products'    => 'products.php',
];

if (isset($pages[$path])) {
    require __DIR__ . '/pages/' . $pages[$path];
    return true;
}

if ($path === '/style.css') {
    header('Content-Type: text/css; charset=utf-8');
    readfile(__DIR__ . '/style.css');
    return true;
}

if (preg_match('#^/products/([0-9]+)$#', $path, $m) && find_product((int) $m[1]) !== null) {
    $product = find_product((int) $m[1]);
    require __DIR__ . '/pages/product.php';
    return true;
}

require __DIR__ . '/pages/not_found.php';
return true;
