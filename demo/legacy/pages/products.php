<?php
// Only router.php shows this; asked for by its own URL (PHP-FPM runs it then), a 404.
if (!defined('LEGACY_ROUTER')) {
    http_response_code(404);
    exit;
}
page_start('Products');
?>
<h1>Products</h1>
<ul>
<?php foreach (PRODUCTS as $id => $p): ?>
  <li><a href="/products/<?= $id ?>"><?= h($p['name']) ?></a>, <?= h($p['price']) ?></li>
<?php endforeach; ?>
</ul>
<p>This list is served by legacy PHP and only knows the old catalogue.
Newer products (<a href="/products/3">/products/3</a> onwards) are served by the new Python app.</p>
<?php
page_end();
