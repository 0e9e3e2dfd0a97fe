<?php
/** @var array $product set by router.php */
page_start($product['name']);
?>
<h1><?= h($product['name']) ?></h1>
<p><?= h($product['blurb']) ?></p>
<p>Price: <?= h($product['price']) ?></p>
<p>This product page is served by legacy PHP.</p>
<?php
page_end();
