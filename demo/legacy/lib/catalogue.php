<?php
// The products the legacy site still knows about. Product 3 onwards has
// already moved to the new Python app, so this site 404s them.
declare(strict_types=1);
// Only router.php shows this; asked for by its own URL (PHP-FPM runs it then), a 404.
if (!defined('LEGACY_ROUTER')) {
    http_response_code(404);
    exit;
}

const PRODUCTS = [
    1 => ['name' => 'Brass desk lamp', 'price' => '39.00',
          'blurb' => 'A heavy brass lamp with a green glass shade.'],
    2 => ['name' => 'Oak bookshelf', 'price' => '149.00',
          'blurb' => 'Five shelves of solid oak. Assembly required.'],
];

function find_product(int $id): ?array
{
    return PRODUCTS[$id] ?? null;
}
