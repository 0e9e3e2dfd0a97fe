<?php
/** @var array $product set by router.php */
// Only router.php shows this; asked for by its own URL (PHP-FPM runs it then), a 404.
if (!defined('LEGACY_ROUTER')) {
    http_response_code(404);
    exit;
}
page_start($product['name']);
?>
<h1><?= h($product['name']) ?></h1>
<p><?= h($product['blurb']) ?></p>
<p>Price: <?= h($product['price']) ?></p>
<p>This product page is served by legacy PHP.</p>
<?php
page_end();
