-- The ToteSys OLTP schema on MySQL 8 / MariaDB 10.6+ (the same tables as totesys_schema.sql,
-- in MySQL's types: DATETIME(3) for timestamp(3), DECIMAL for numeric, ENUM columns for the
-- enum types, BOOLEAN (TINYINT(1)) for boolean). Statements are separated by blank lines;
-- every statement can run again on an existing database.

CREATE TABLE IF NOT EXISTS address (
    address_id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    address_line_1 TEXT NOT NULL,
    address_line_2 TEXT,
    district TEXT,
    city TEXT NOT NULL,
    postal_code TEXT NOT NULL,
    country TEXT NOT NULL,
    phone TEXT NOT NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    last_updated DATETIME(3) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci

CREATE TABLE IF NOT EXISTS counterparty (
    counterparty_id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    counterparty_legal_name TEXT NOT NULL,
    legal_address_id INT NOT NULL,
    commercial_contact TEXT,
    delivery_contact TEXT,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    last_updated DATETIME(3) NOT NULL,
    FOREIGN KEY (legal_address_id) REFERENCES address (address_id) ON UPDATE CASCADE ON DELETE RESTRICT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci

CREATE TABLE IF NOT EXISTS currency (
    currency_id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    currency_code VARCHAR(3) NOT NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    last_updated DATETIME(3) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci

CREATE TABLE IF NOT EXISTS department (
    department_id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    department_name TEXT NOT NULL,
    location TEXT,
    manager TEXT,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    last_updated DATETIME(3) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci

CREATE TABLE IF NOT EXISTS design (
    design_id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    design_name TEXT NOT NULL,
    file_location TEXT NOT NULL,
    file_name TEXT NOT NULL,
    last_updated DATETIME(3) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci

CREATE TABLE IF NOT EXISTS staff (
    staff_id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    department_id INT NOT NULL,
    email_address TEXT NOT NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    last_updated DATETIME(3) NOT NULL,
    FOREIGN KEY (department_id) REFERENCES department (department_id) ON UPDATE CASCADE ON DELETE RESTRICT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci

CREATE TABLE IF NOT EXISTS payment_type (
    payment_type_id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    payment_type_name ENUM('SALES_RECEIPT', 'SALES_REFUND', 'PURCHASE_PAYMENT', 'PURCHASE_REFUND') NOT NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    last_updated DATETIME(3) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci

CREATE TABLE IF NOT EXISTS sales_order (
    sales_order_id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    last_updated DATETIME(3) NOT NULL,
    design_id INT NOT NULL,
    staff_id INT NOT NULL,
    counterparty_id INT NOT NULL,
    units_sold INT NOT NULL,
    unit_price DECIMAL(10, 2) NOT NULL,
    currency_id INT NOT NULL,
    agreed_delivery_date TEXT NOT NULL,
    agreed_payment_date TEXT NOT NULL,
    agreed_delivery_location_id INT NOT NULL,
    FOREIGN KEY (design_id) REFERENCES design (design_id) ON UPDATE CASCADE ON DELETE RESTRICT,
    FOREIGN KEY (staff_id) REFERENCES staff (staff_id) ON UPDATE CASCADE ON DELETE RESTRICT,
    FOREIGN KEY (counterparty_id) REFERENCES counterparty (counterparty_id) ON UPDATE CASCADE ON DELETE RESTRICT,
    FOREIGN KEY (currency_id) REFERENCES currency (currency_id) ON UPDATE CASCADE ON DELETE RESTRICT,
    FOREIGN KEY (agreed_delivery_location_id) REFERENCES address (address_id) ON UPDATE CASCADE ON DELETE RESTRICT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci

CREATE TABLE IF NOT EXISTS purchase_order (
    purchase_order_id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    last_updated DATETIME(3) NOT NULL,
    staff_id INT NOT NULL,
    counterparty_id INT NOT NULL,
    item_code TEXT NOT NULL,
    item_quantity INT NOT NULL,
    item_unit_price DECIMAL(10, 2) NOT NULL,
    currency_id INT NOT NULL,
    agreed_delivery_date TEXT NOT NULL,
    agreed_payment_date TEXT NOT NULL,
    agreed_delivery_location_id INT NOT NULL,
    FOREIGN KEY (staff_id) REFERENCES staff (staff_id) ON UPDATE CASCADE ON DELETE RESTRICT,
    FOREIGN KEY (counterparty_id) REFERENCES counterparty (counterparty_id) ON UPDATE CASCADE ON DELETE RESTRICT,
    FOREIGN KEY (currency_id) REFERENCES currency (currency_id) ON UPDATE CASCADE ON DELETE RESTRICT,
    FOREIGN KEY (agreed_delivery_location_id) REFERENCES address (address_id) ON UPDATE CASCADE ON DELETE RESTRICT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci

CREATE TABLE IF NOT EXISTS transaction (
    transaction_id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    transaction_type ENUM('SALE', 'PURCHASE') NOT NULL,
    sales_order_id INT,
    purchase_order_id INT,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    last_updated DATETIME(3) NOT NULL,
    UNIQUE KEY (sales_order_id),
    UNIQUE KEY (purchase_order_id),
    FOREIGN KEY (sales_order_id) REFERENCES sales_order (sales_order_id) ON UPDATE CASCADE ON DELETE SET NULL,
    FOREIGN KEY (purchase_order_id) REFERENCES purchase_order (purchase_order_id) ON UPDATE CASCADE ON DELETE SET NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci

CREATE TABLE IF NOT EXISTS payment (
    payment_id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    last_updated DATETIME(3) NOT NULL,
    transaction_id INT NOT NULL,
    counterparty_id INT NOT NULL,
    payment_amount DECIMAL(10, 2) NOT NULL,
    currency_id INT NOT NULL,
    payment_type_id INT NOT NULL,
    paid BOOLEAN NOT NULL,
    payment_date TEXT NOT NULL,
    company_ac_number INT NOT NULL,
    counterparty_ac_number INT NOT NULL,
    UNIQUE KEY (transaction_id),
    FOREIGN KEY (transaction_id) REFERENCES transaction (transaction_id) ON UPDATE CASCADE ON DELETE RESTRICT,
    FOREIGN KEY (counterparty_id) REFERENCES counterparty (counterparty_id) ON UPDATE CASCADE ON DELETE RESTRICT,
    FOREIGN KEY (currency_id) REFERENCES currency (currency_id) ON UPDATE CASCADE ON DELETE RESTRICT,
    FOREIGN KEY (payment_type_id) REFERENCES payment_type (payment_type_id) ON UPDATE CASCADE ON DELETE RESTRICT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
