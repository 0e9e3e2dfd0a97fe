<?php
// Shared page chrome for the legacy shop (the same header and footer on every page).
declare(strict_types=1);
// Only router.php shows this; asked for by its own URL (PHP-FPM runs it then), a 404.
if (!defined('LEGACY_ROUTER')) {
    http_response_code(404);
    exit;
}

function h(string $text): string
{
    return htmlspecialchars($text, ENT_QUOTES | ENT_HTML5, 'UTF-8');
}

function page_start(string $title): void
{
    header('Content-Type: text/html; charset=utf-8');
    $title = h($title);
    echo <<<HTML
<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{$title} | Acme Home Goods</title>
  <link rel="stylesheet" href="/style.css">
</head>
<body>
<header>
  <strong>Acme Home Goods</strong>
  <nav>
    <a href="/">Home</a> |
    <a href="/products">Products</a> |
    <a href="/news.php">News</a> |
    <a href="/about.php">About</a> |
    <a href="/contact.php">Contact</a>
  </nav>
</header>
<main>

HTML;
}

function page_end(): void
{
    $php = h(PHP_VERSION);
    echo <<<HTML

</main>
<footer>served by legacy PHP {$php} &middot; &copy; 2009&ndash;2014 Acme Home Goods</footer>
</body>
</html>

HTML;
}
